"""Model plugins: where the weights of each known model come from."""
