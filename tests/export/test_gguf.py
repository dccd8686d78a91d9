"""The GGUF export (coalora.export.gguf_file, gguf_ppl, bundle_gguf): read back with gguf-py, loaded by llama.cpp.

llama-cpp-python is a test requirement (``requirements-llama.txt``, installed by ``make test``): these
tests import it and fail without it, they do not skip.
"""

from __future__ import annotations

import math

import gguf
import llama_cpp  # noqa: F401 (a missing llama-cpp-python fails this module, never skips it)
import numpy as np
import pytest
import torch

from coalora.errors import CoaloraError
from coalora.export.gguf import gguf_bits, tensor_types
from coalora.export.gguf_file import merged_weights, permute_qk, unpermute_qk, write_gguf
from coalora.export.gguf_ppl import llama_cpp_perplexity, load_llama, window_logits
from coalora.models import find_targets
from coalora.quant.config import ALL_CONFIGS, ModelQuantConfig

TEXT = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings and "
        "arrows of outrageous fortune, or to take arms against a sea of troubles, and by opposing end them. ") * 8
VOCAB = 320
HEADS, KV_HEADS = 4, 2


def _bpe_tokenizer():
    """A GPT-2-style byte-level BPE tokenizer trained in memory (all 256 bytes, then merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 8, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def _tiny_llama():
    """2 blocks, hidden 256, intermediate 512 (every row a multiple of 256, so K-quants apply), 4 heads of
    64 over 2 KV heads; weights at std 0.1 so attention is peaked and a wrong q/k layout shows in the logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=256,
                      tie_word_embeddings=True, rms_norm_eps=1e-5, initializer_range=0.1)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).float().eval()


def _mixed_config(targets) -> ModelQuantConfig:
    """Targets cycling through the table's five types: Q2_K, Q3_K, IQ4_NL (b0 4, B0 16), Q4_K (b0 4, B0 64), Q8_0."""
    picks = [next(i for i, c in enumerate(ALL_CONFIGS) if (c.b0, c.B0) == want)
             for want in ((2, 64), (3, 32), (4, 16), (4, 64), (8, 64))]
    return ModelQuantConfig.from_ids("tiny-llama-256", targets, [picks[i % len(picks)] for i in range(len(targets))])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, tok = _tiny_llama(), _bpe_tokenizer()
    targets = find_targets(model)
    cfg = _mixed_config(targets)
    g = torch.Generator().manual_seed(1)
    originals = {t.name: m.weight.detach().clone() for t, m in
                 zip(targets, [dict(model.named_modules())[t.name] for t in targets])}
    lora = {t.name: (torch.randn(4, t.shape[1], generator=g) * 0.05, torch.randn(t.shape[0], 4, generator=g) * 0.05)
            for t in targets}
    merged = merged_weights(originals, cfg, lora, alpha=8.0, rank=4)
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    info = write_gguf(model, tok, cfg, path, weights=merged, name="tiny")
    return {"model": model, "tok": tok, "cfg": cfg, "merged": merged, "lora": lora, "originals": originals,
            "info": info, "reader": gguf.GGUFReader(path), "dir": path.parent}


def test_permutation_is_llama_cpp_interleaving_and_inverts():
    w = torch.arange(2 * 8, dtype=torch.float32)[:, None].repeat(1, 3)  # 2 heads of 8 rows
    p = permute_qk(w, 2)
    assert p[:8, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7] and p[8:, 0].tolist() == [8, 12, 9, 13, 10, 14, 11, 15]
    assert torch.equal(unpermute_qk(p, 2), w)


def test_every_target_has_the_tables_type_and_the_file_its_bits(tiny):
    r, cfg, info = tiny["reader"], tiny["cfg"], tiny["info"]
    got = {t.name: t.tensor_type.name for t in r.tensors}
    assert {n: got[n] for n, _ in tensor_types(cfg)} == dict(tensor_types(cfg))
    assert set(dict(tensor_types(cfg)).values()) == {"Q2_K", "Q3_K", "IQ4_NL", "Q4_K", "Q8_0"}
    # non-targets: norms F32, tied embeddings as llama.cpp's output tensor (256-wide rows: Q6_K), no output tensor
    assert got["token_embd.weight"] == "Q6_K" and "output.weight" not in got
    assert got["output_norm.weight"] == "F32" and got["blk.1.ffn_norm.weight"] == "F32"
    assert len(r.tensors) == info.tensors == 2 * 9 + 2
    assert info.bits_per_weight == pytest.approx(gguf_bits(cfg), rel=1e-12)
    stored = sum(int(t.n_bytes) for t in r.tensors if t.name in dict(tensor_types(cfg)))
    assert stored == info.target_bytes


def test_metadata_is_llamas_and_the_tokenizers(tiny):
    r, tok = tiny["reader"], tiny["tok"]

    def field(key):
        return r.fields[key].contents()

    assert field("general.architecture") == "llama" and field("general.name") == "tiny"
    assert (field("llama.block_count"), field("llama.embedding_length"), field("llama.feed_forward_length")) == (2, 256, 512)
    assert (field("llama.attention.head_count"), field("llama.attention.head_count_kv")) == (HEADS, KV_HEADS)
    assert field("llama.rope.dimension_count") == 64 and field("llama.vocab_size") == VOCAB
    assert field("llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2"
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == VOCAB and tokens[tok.convert_tokens_to_ids("Ġthe")] == "Ġthe"
    assert tokens[-1] == f"[PAD{VOCAB - 1}]"
    assert field("tokenizer.ggml.token_type")[0] == int(gguf.TokenType.CONTROL)
    assert len(field("tokenizer.ggml.merges")) == len(tok.get_vocab()) - 1 - 256  # each merge made one token
    assert field("tokenizer.ggml.bos_token_id") == tok.bos_token_id


def test_dequantized_targets_are_the_merged_weights_after_undoing_the_permutation(tiny):
    """Each stored target, dequantized by gguf-py, is the merged float weight ``W + (alpha/r) B A`` up to
    its type's quantization error; q and k only after undoing the row permutation."""
    r, cfg, merged = tiny["reader"], tiny["cfg"], tiny["merged"]
    t0 = cfg.targets[0]
    a, b = tiny["lora"][t0.name]
    assert torch.allclose(merged[t0.name], tiny["originals"][t0.name] + 2.0 * b @ a)
    bound = {"Q2_K": 0.45, "Q3_K": 0.25, "IQ4_NL": 0.15, "Q4_K": 0.12, "Q8_0": 0.01}
    stored = {t.name: t for t in r.tensors}
    for t, (name, ty) in zip(cfg.targets, tensor_types(cfg)):
        w = torch.from_numpy(gguf.quants.dequantize(stored[name].data, stored[name].tensor_type).copy())
        assert tuple(w.shape) == t.shape
        if ".attn_q." in name or ".attn_k." in name:
            heads = HEADS if ".attn_q." in name else KV_HEADS
            permuted_err = ((w - merged[t.name]).norm() / merged[t.name].norm()).item()
            assert permuted_err > 1.0  # the layout really moved rows
            w = unpermute_qk(w, heads)
        err = ((w - merged[t.name]).norm() / merged[t.name].norm()).item()
        assert err < bound[ty], (name, ty, err)


def test_llama_cpp_logits_of_a_float_gguf_equal_the_models(tiny):
    """With every tensor in F32 the file is the same function as the HF model: llama.cpp's log-probs
    match transformers' (a wrong q/k layout, tokenizer size or hyper-parameter would not), and the
    perplexity of the file under coalora's convention equals :func:`perplexity`'s."""
    from coalora.evaluation.perplexity import perplexity

    model, tok = tiny["model"], tiny["tok"]
    path = tiny["dir"] / "float.gguf"
    write_gguf(model, tok, None, path)
    ids = tok.encode(TEXT)[:64]
    llm = load_llama(path, n_ctx=64, n_threads=2)
    ours = torch.log_softmax(torch.from_numpy(window_logits(llm, ids)).double(), -1)
    llm.close()
    with torch.no_grad():
        ref = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    # measured: max |difference| 0.011 nats (llama.cpp's F16 KV cache); without the q/k permutation 9.5
    assert (ours - ref).abs().max() < 0.05
    windows = torch.tensor([ids[:32], ids[32:64]])
    lc = llama_cpp_perplexity(path, windows, n_threads=2)
    hf = perplexity(model, windows, progress=False)
    assert (lc.windows, lc.seqlen, lc.tokens) == (2, 32, 62)
    assert lc.ppl == pytest.approx(hf.ppl, rel=1e-3)


def test_bad_input_is_one_clear_error(tiny, tmp_path):
    from coalora.models import ByteTokenizer, tiny_llama

    model, tok = tiny["model"], tiny["tok"]
    with pytest.raises(CoaloraError, match="fast tokenizer"):
        write_gguf(model, ByteTokenizer(), None, tmp_path / "x.gguf")
    with pytest.raises(CoaloraError, match="no float weight given"):
        write_gguf(model, tok, tiny["cfg"], tmp_path / "x.gguf", weights={})
    with pytest.raises(CoaloraError, match="token id .* only 256 rows"):
        write_gguf(tiny_llama(), tok, None, tmp_path / "x.gguf")
    with pytest.raises(CoaloraError, match="alpha and rank"):
        merged_weights(tiny["originals"], tiny["cfg"], tiny["lora"])
    with pytest.raises(CoaloraError, match="outside the GGUF's vocabulary"):
        llama_cpp_perplexity(tiny["info"].path, torch.full((1, 4), VOCAB), n_threads=1)
    assert not (tmp_path / "x.gguf").exists()


def test_bundle_with_gguf_records_and_reports_llama_cpp_perplexity(tiny, tmp_path):
    from coalora.evaluation.spec import EvalWindows
    from coalora.export.bundle import export_bundle, read_bundle_meta
    from coalora.export.bundle_gguf import GgufSource

    cfg, tok = tiny["cfg"], tiny["tok"]
    ids = torch.tensor(tok.encode(TEXT)[:96]).reshape(3, 32)
    ew = EvalWindows("strided-v1", ids, (("t", 0), ("t", 32), ("t", 64)), "tiny:eval@0")
    measured = {"ppl": 123.0, "nll": math.log(123.0), "eval_set": "tiny:eval@0", "seqlen": 32, "windows": 3,
                "tokens": 93, "eval_spec": "strided-v1", "kld": None}
    adapter = {"id": "x", "method": "coalora", "rank": 4, "alpha": 8.0}
    out = export_bundle("tiny-llama-256", cfg, tiny["originals"], tmp_path / "b", weights_hash="w" * 16,
                        lora=tiny["lora"], adapter=adapter, measured=measured,
                        gguf=GgufSource(tiny["model"], tok, ew, threads=2))
    _, meta = read_bundle_meta(out)  # model.gguf is hashed and verified like every other file
    g = meta["gguf"]
    assert "model.gguf" in meta["files"] and g["bits_per_weight"] == pytest.approx(gguf_bits(cfg))
    assert gguf.GGUFReader(out / "model.gguf").fields["general.name"].contents() == "tiny-llama-256"
    ours = g["llama_cpp"]
    assert ours["ppl"] == pytest.approx(llama_cpp_perplexity(out / "model.gguf", ids, n_threads=2).ppl, rel=1e-6)
    readme = (out / "README.md").read_text()
    assert f"| {g['bits_per_weight']:.3f} | {ours['ppl']:.3f} (llama.cpp) |" in readme
    assert "| 123.000 (simulated) |" in readme and f"**{ours['ppl']:.3f}**" in readme
    plain = export_bundle("tiny-llama-256", cfg, tiny["originals"], tmp_path / "p", weights_hash="w" * 16)
    assert not (plain / "model.gguf").exists() and "gguf" not in read_bundle_meta(plain)[1]
    with pytest.raises(CoaloraError, match="seqlen 32 but the bundle's measured perplexity has 64"):
        export_bundle("tiny-llama-256", cfg, tiny["originals"], tmp_path / "c", weights_hash="w" * 16,
                      measured={**measured, "seqlen": 64}, gguf=GgufSource(tiny["model"], tok, ew))
    assert np.isfinite(ours["nll"])


@pytest.fixture(scope="module")
def smollm2_coalora():
    """A private SmolLM2-135M wrapped by the shipped CoA-LoRA adapter, its Fisher error table and 4 x 128 windows."""
    from coalora.adapter.trained import load_trained
    from coalora.evaluation.perplexity import eval_windows
    from coalora.explorer import default_adapter
    from coalora.lqlora.sensitivity import cached_error_table
    from coalora.models import load_model

    model, tok = load_model("smollm2-135m")
    targets = find_targets(model)
    table = cached_error_table(model, "smollm2-135m", targets, "fisher", tokenizer=tok, progress=False)
    coa = load_trained(default_adapter("smollm2-135m"), model, "smollm2-135m", targets)
    coa.eval()
    return model, tok, targets, table.numpy(), coa, eval_windows(tok, seqlen=128, windows=4)


@pytest.mark.integration
@pytest.mark.parametrize("budget", [3.0, 4.0])
def test_smollm2_gguf_in_llama_cpp_lands_next_to_coaloras_simulated_perplexity(smollm2_coalora, budget, tmp_path,
                                                                               capsys):
    """The allocator's configuration at ``budget`` bits with its generated adapter, exported as a bundle
    with ``model.gguf``: llama.cpp's perplexity of the file on the bundle's windows is within a factor
    1.5 of coalora's simulated perplexity of the configuration.

    Tolerance, from measurement (4 x 128 tokens, strided-v1): 3 bits, simulated 64.2, llama.cpp 52.4
    (the 576-wide rows take llama.cpp's block-32 fallback types, so the file stores 4.25 bits per
    target weight, not 3); 4 bits, simulated 44.0, llama.cpp 44.8. NF-k and ggml's types differ by
    less than that factor; a q/k layout or tokenizer bug gives perplexities in the thousands.
    """
    from coalora.evaluation.perplexity import perplexity
    from coalora.export.bundle import export_bundle, read_bundle_meta
    from coalora.export.bundle_gguf import GgufSource
    from coalora.lqlora.allocate import allocate_config

    model, tok, targets, table, coa, ew = smollm2_coalora
    cfg = allocate_config(table, "smollm2-135m", targets, budget)
    with torch.no_grad():
        coa.set_config(cfg)
        sim = perplexity(model, ew.windows, progress=False)
        lora = coa.lora_for(cfg)
    a = coa.adapter_config
    measured = {"ppl": sim.ppl, "nll": sim.nll, "eval_set": ew.dataset, "seqlen": ew.seqlen, "windows": ew.n,
                "tokens": sim.tokens, "eval_spec": ew.spec, "kld": None}
    out = export_bundle("smollm2-135m", cfg, dict(coa.applier.originals), tmp_path / "b", weights_hash="w" * 16,
                        lora=lora, adapter={"id": "default", "method": "coalora", "rank": a.rank, "alpha": a.alpha},
                        measured=measured, gguf=GgufSource(model, tok, ew))
    g = read_bundle_meta(out)[1]["gguf"]
    lc = g["llama_cpp"]
    with capsys.disabled():
        print(f"\n{budget}-bit allocator config ({cfg.avg_bits:.3f} bits): coalora simulated ppl {sim.ppl:.3f}, "
              f"llama.cpp ppl {lc['ppl']:.3f}; GGUF {g['bits_per_weight']:.3f} bits/weight, "
              f"{g['file_bytes'] / 2**20:.1f} MiB, export {g['export_seconds']:.1f} s, llama.cpp eval {lc['seconds']:.1f} s")
    assert math.isfinite(lc["ppl"]) and sim.ppl / 1.5 < lc["ppl"] < 1.5 * sim.ppl
    assert g["bits_per_weight"] == pytest.approx(gguf_bits(cfg), rel=0.01)
    assert f"{lc['ppl']:.3f} (llama.cpp)" in (out / "README.md").read_text()
