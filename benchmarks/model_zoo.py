"""Parameters and MACs of every zoo model at 32x32 and 10 classes, beside the published figures.

    python benchmarks/model_zoo.py
"""

from _common import save
from cnnzip.measure import count_macs, count_parameters
from cnnzip.models import create_model, list_models

PUBLISHED = {  # parameters (M) and MACs (M) from the papers
    "resnet20": (0.27, 41), "resnet32": (0.46, 69), "resnet44": (0.66, 98), "resnet56": (0.85, 125),
    "resnet110": (1.7, 253), "vgg19": (20.04, None), "densenet40": (1.0, None),
}


def main() -> None:
    rows = []
    for name in list_models():
        shape = (1, 8, 8) if name == "small_cnn" else (3, 32, 32)
        model = create_model(name, num_classes=10, **({"in_channels": 1} if name == "small_cnn" else {}))
        params, macs = count_parameters(model), count_macs(model, shape)
        pub = PUBLISHED.get(name, (None, None))
        rows.append({"model": name, "params_M": params / 1e6, "macs_M": macs / 1e6, "published_params_M": pub[0],
                     "published_macs_M": pub[1]})
        print(f"{name:<16} {params / 1e6:8.3f}M params  {macs / 1e6:9.1f}M MACs   published: "
              f"{pub[0] if pub[0] else '-'}M / {pub[1] if pub[1] else '-'}M")
    save("model_zoo", {"rows": rows})


if __name__ == "__main__":
    main()
