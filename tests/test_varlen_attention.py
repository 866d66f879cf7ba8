"""hanlin's varlen attention (packed training) gives each sample exactly the attention it has alone, sliding
windows included: a tiny random Gemma3, built from a config, with a window shorter than its samples."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

WINDOW = 4


def tiny_gemma3(seed: int = 0):
    """Two layers, a local (sliding) one then a global one, as Gemma3 alternates them; random weights, no download."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                              sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"],
                              attn_implementation="eager")
    return Gemma3ForCausalLM(config).eval()


def test_packed_gemma3_keeps_its_sliding_window() -> None:
    """Logits of samples of 13 and 9 tokens (both past the window of 4) packed in one row under varlen attention
    equal each sample's logits run alone under transformers' own sliding-window mask."""
    from hanlin.plugins.finetuners.packing import as_row, collate
    from hanlin.plugins.finetuners.render import Sample
    from hanlin.plugins.finetuners.varlen_attention import use_varlen_attention

    model = tiny_gemma3()
    assert model.model.layers[0].self_attn.sliding_window == WINDOW  # the local layer really has a window
    generator = torch.Generator().manual_seed(1)
    samples = [Sample(ids, ids) for ids in (torch.randint(1, 128, (n,), generator=generator).tolist() for n in (13, 9))]
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([s.input_ids])).logits[0] for s in samples]
        use_varlen_attention(model)
        packed_batch = collate([as_row(samples)], 0)
        packed = model(input_ids=packed_batch["input_ids"], position_ids=packed_batch["position_ids"]).logits[0]
    torch.testing.assert_close(packed[:13], alone[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(packed[13:22], alone[1], rtol=1e-4, atol=1e-5)


def test_window_mask_matches_transformers_overlay() -> None:
    from transformers.masking_utils import causal_mask_function, sliding_window_overlay

    from hanlin.plugins.finetuners.varlen_attention import window_mask

    assert window_mask(WINDOW, WINDOW, "cpu") is None  # the window covers the sample: plain causal attention
    mask = window_mask(9, WINDOW, "cpu")
    overlay = sliding_window_overlay(WINDOW)
    for q in range(9):
        for k in range(9):
            assert bool(mask[q, k]) == (causal_mask_function(0, 0, q, k) and overlay(0, 0, q, k)), (q, k)
