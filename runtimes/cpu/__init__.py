"""CPU runtime: llama.cpp through llama-cpp-python."""
