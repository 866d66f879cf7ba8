"""Quantizers (`hanlin quantize`): GGUF types through llama.cpp's quantizer, AWQ W4A16 for the gpu runtime."""
