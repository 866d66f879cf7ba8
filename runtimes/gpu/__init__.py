"""hanlin's own serving engine: paged KV cache, continuous batching, prefix caching, Triton kernels.

Small modules with one job each: config (what the HF config says), model (the transformer over a flat batch),
layers (kernel or torch reference per op), block_manager (paged blocks, ref counts, prefix hashes), scheduler
(who runs this step), engine (the step loop), chat_model (the ChatModel protocol) and plugin. Sampling, reply
streaming and GGUF conversion are shared with the transformers runtime: hanlin.runtimes.sampling, .reply_stream
and .gguf_convert.
"""
