"""Batched next-token log-probabilities of the transformers engine: what ICM's scoring calls."""

from __future__ import annotations

import pytest
import torch

from workflow_scripts.engines import EngineSettings, open_engine


@pytest.fixture(scope="module")
def engine(tiny_model_store):
    model = tiny_model_store("llama", "safetensors", "float32")
    opened = open_engine(EngineSettings(kind="transformers", model_path=str(model), max_num_seqs=8))
    yield opened
    opened.close()


def test_a_batch_of_different_lengths_scores_each_prompt_as_if_alone(engine):
    tokenizer = engine.tokenizer
    prompts = [tokenizer(text)["input_ids"] for text in ("The teacher", "A resumable job continues after the", "Q")]
    batched = engine.next_token_logprobs(prompts, 5)
    for prompt, candidates in zip(prompts, batched, strict=True):
        with torch.inference_mode():
            logits = engine.model(input_ids=torch.tensor([prompt])).logits[0, -1].float()
        expected = torch.topk(torch.log_softmax(logits, -1), 5)
        assert [c.token_id for c in candidates] == expected.indices.tolist()
        assert [c.logprob for c in candidates] == pytest.approx(expected.values.tolist(), abs=1e-4)
        assert [c.text for c in candidates] == [tokenizer.decode([i]) for i in expected.indices.tolist()]


def test_a_prompt_longer_than_the_context_is_refused(engine):
    from workflow_scripts.errors import DistilleryError

    with pytest.raises(DistilleryError, match="does not fit max_model_len"):
        engine.next_token_logprobs([[1] * (engine.max_model_len + 1)], 5)
