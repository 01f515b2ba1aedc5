"""The kernel-safe package: everything the Kaggle inference script is made of.

`python -m src.kernel build` inlines every module here (and nothing else) into one self-contained script, so the
kernel and `src` share one implementation of decoding, windows, runtimes, blending, post-processing and the
submission. A module here imports only the standard library, numpy, soundfile, soxr, the other modules of this
package, and (inside functions) the runtimes Kaggle's image has or the kernel installs: torch, onnxruntime,
openvino, a TFLite runtime, tensorflow.
"""
