"""Remote runtime: any OpenAI-compatible endpoint (hanlin serve, vLLM, LMDeploy) as a ChatModel."""
