"""Deep compression: magnitude pruning, weight sharing, Huffman coding, and the compressed file.

    shared, books = deep_compress(model, MagnitudePruning(ratio=0.8), WeightSharing(conv_bits=5, fc_bits=5))
    report = save_compressed("model.cnnz", shared, books, meta)   # real bytes, per layer and in total
    model, meta = load_compressed("model.cnnz")                   # bit-exact weights
"""

from .fileformat import LayerSize, SizeReport, load_compressed, save_compressed
from .huffman import HuffmanStream, entropy_bits
from .magnitude import (
    MagnitudePruning,
    MaskHook,
    apply_masks,
    iterative_prune,
    magnitude_masks,
    prunable_weights,
    prune_magnitude,
    sparsity,
)
from .pipeline import deep_compress
from .sharing import Codebook, SharedWeightsHook, WeightSharing, codebooks_of, kmeans_1d, share_weights
from .step import DeepCompressStep

__all__ = [
    "LayerSize", "SizeReport", "load_compressed", "save_compressed",
    "HuffmanStream", "entropy_bits",
    "MagnitudePruning", "MaskHook", "apply_masks", "iterative_prune", "magnitude_masks", "prunable_weights",
    "prune_magnitude", "sparsity",
    "deep_compress",
    "Codebook", "SharedWeightsHook", "WeightSharing", "codebooks_of", "kmeans_1d", "share_weights",
    "DeepCompressStep",
]
