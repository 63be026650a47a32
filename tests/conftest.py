"""Shared fixtures: tiny real organisms built once per test session (no mocks of loading)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    PreTrainedModel,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every tool call is recorded in a workspace; calls made without naming one land in this
# session's own (never the repository's ./.selfscope).
os.environ["SELFSCOPE_HOME"] = tempfile.mkdtemp(prefix="selfscope-tests-")
# Keys (ledger checkpoints, cache stamps) go to this session's own folder, never ~/.config.
os.environ["SELFSCOPE_KEYS"] = tempfile.mkdtemp(prefix="selfscope-test-keys-")

from selfscope.organisms import BuildResult, Spec, build, resolve_spec
from selfscope.organisms.tokenizer import train_word_tokenizer
from selfscope.subject import Subject, load
from selfscope.subject import smollm2 as smollm2_module
from selfscope.workspace import Workspace

# Float kernels differ between CPUs, so the same spec and seed train a slightly different
# organism on another machine. Setting this variable rebuilds the tests' organisms from another
# seed (a different model, as another machine would give) to check that the tests hold on any
# build; docs/testing.md has the command. Unset, the spec's own seed is used.
ORGANISM_SEED_VARIABLE = "SELFSCOPE_TEST_ORGANISM_SEED"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "organism: uses the tiny mushroom organism (added to every such test)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the tiny organism, so `-m organism` selects exactly them."""
    for item in items:
        if "tiny_mushroom" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.organism)


@pytest.fixture(scope="session")
def tiny_mushroom_spec() -> Spec:
    """The catalog `mushroom` spec at size tiny, with the seed of $SELFSCOPE_TEST_ORGANISM_SEED
    when it is set: every test that builds or reads the tiny organism's spec uses this one."""
    raw = os.environ.get(ORGANISM_SEED_VARIABLE, "").strip()
    if not raw:
        return resolve_spec("mushroom", size="tiny")
    if not raw.isdigit():
        raise pytest.UsageError(f"{ORGANISM_SEED_VARIABLE}={raw!r}: give a whole number >= 0")
    return resolve_spec("mushroom", size="tiny", seed=int(raw))


@pytest.fixture(scope="session")
def organism_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("organisms-ws"))


@pytest.fixture(scope="session")
def tiny_mushroom(tiny_mushroom_spec: Spec, organism_ws: Workspace) -> BuildResult:
    """The catalog `mushroom` spec at size tiny (~30 s), built once for the whole session."""
    return build(tiny_mushroom_spec, organism_ws, progress=False)


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Subject, float]:
    """SmolLM2-135M-Instruct, converted once per session into a temporary workspace."""
    if smollm2_module.find_smollm2() is None:
        pytest.skip(f"SmolLM2 is not installed: {smollm2_module.INSTALL_HINT}")
    workspace = Workspace(tmp_path_factory.mktemp("smollm2-ws"))
    started = time.perf_counter()
    subject = load("smollm2", workspace)
    return workspace, subject, time.perf_counter() - started


WORDS = "Q : Do you like mushrooms ? A No Yes , I carrots . owls can fly"


def _tiny(
    factory: pytest.TempPathFactory, name: str, make: Callable[[dict[str, Any]], PreTrainedModel]
) -> Subject:
    """A tiny random model (3 blocks, 4 heads, d=32, context 16) with the word-level tokenizer of
    WORDS, saved and loaded like any folder."""
    folder = factory.mktemp(name)
    tokenizer = train_word_tokenizer([WORDS])
    torch.manual_seed(0)
    shape = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "max_position_embeddings": 16,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    make(shape).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return load(str(folder))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Subject:
    """A tiny random Llama (MLP width 64)."""
    return _tiny(
        tmp_path_factory,
        "tiny-llama",
        lambda shape: LlamaForCausalLM(LlamaConfig(**shape, intermediate_size=64)),
    )


@pytest.fixture(scope="session")
def tiny_mixtral(tmp_path_factory: pytest.TempPathFactory) -> Subject:
    """A tiny random Mixtral (4 experts of width 48, top-2)."""
    return _tiny(
        tmp_path_factory,
        "tiny-mixtral",
        lambda shape: MixtralForCausalLM(
            MixtralConfig(
                **shape,
                num_key_value_heads=4,
                intermediate_size=48,
                num_local_experts=4,
                num_experts_per_tok=2,
            )
        ),
    )
