"""Llama-family decoders: parity with PyTorch transformers (safetensors and GGUF), GGUF errors,
generation, and the prompt pipeline with a decoder."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from autogpt_jax.errors import ModelLoadError
from autogpt_jax.models import hf
from autogpt_jax.models.generation import generate, generate_text
from autogpt_jax.models.scan import stack_layers
from autogpt_jax.training import objectives


def _torch_logits(path, ids, mask=None, gguf_file=None):
    import torch
    from transformers import AutoModelForCausalLM

    kw = {"gguf_file": gguf_file} if gguf_file else {}
    pt = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, **kw).eval()
    with torch.no_grad():
        m = None if mask is None else torch.tensor(np.asarray(mask))
        return pt(torch.tensor(np.asarray(ids)), attention_mask=m).logits.numpy()


@pytest.mark.parametrize("scan_layers", [False, True], ids=["unrolled", "scanned"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_decoder_matches_pytorch(arch, scan_layers, tiny_llama_dir, tiny_qwen2_dir):
    path = tiny_llama_dir if arch == "llama" else tiny_qwen2_dir
    lm = hf.load_model(path)
    if scan_layers:
        stack_layers(lm.model)
    assert lm.config.num_kv_heads == 2 and lm.config.tie_word_embeddings == (arch == "qwen2")
    ids = np.random.default_rng(0).integers(3, 1000, (2, 11))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0  # right padding
    h, _ = lm.model(jnp.asarray(ids), jnp.asarray(mask))
    ours = np.asarray(lm.model.logits(h))
    ref = _torch_logits(path, ids, mask)
    np.testing.assert_allclose(ours[0], ref[0], atol=1e-4)
    np.testing.assert_allclose(ours[1, :7], ref[1, :7], atol=1e-4)


@pytest.mark.slow
def test_smollm2_gguf_matches_pytorch_on_two_prompts(smollm2_path, smollm2_tokenizer):
    """Scanned, as runs build it (test_scan shows scanned and unrolled layers agree)."""
    lm = hf.load_model(smollm2_path)
    stack_layers(lm.model)
    assert (lm.config.num_layers, lm.config.num_heads, lm.config.num_kv_heads) == (30, 9, 3)
    import torch
    from transformers import AutoModelForCausalLM

    # transformers dequantises the GGUF itself: loaded once for both prompts.
    pt = AutoModelForCausalLM.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name,
                                              dtype=torch.float32).eval()
    for text in ["The movie was a total waste of time.", "Hello, my name is"]:
        ids = smollm2_tokenizer(text, return_tensors="np")["input_ids"]
        h, _ = lm.model(jnp.asarray(ids))
        ours = np.asarray(lm.model.logits(h))
        with torch.no_grad():
            ref = pt(torch.tensor(ids)).logits.numpy()
        assert np.abs(ours - ref).max() < 1e-3


def _write_gguf(path, lm_dir, *, qtype="F32", truncate=False):
    """The tiny Llama as llama.cpp would write it: q/k permuted for interleaved rotary pairs."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    weights, _ = hf.read_weights(lm_dir)
    cfg = hf.read_config(lm_dir)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"])
    w.add_vocab_size(cfg["vocab_size"])

    def permute(x, heads):
        return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
             "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
             "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight"}
    for k, v in weights.items():
        v = np.asarray(v, np.float32)
        if k.startswith("model.layers."):
            i, rest = k[len("model.layers."):].split(".", 1)
            name = f"blk.{i}.{layer[rest]}"
        else:
            name = names[k]
        if name.endswith("attn_q.weight"):
            v = permute(v, cfg["num_attention_heads"])
        elif name.endswith("attn_k.weight"):
            v = permute(v, cfg["num_key_value_heads"])
        if v.ndim == 2 and qtype == "F16":
            w.add_tensor(name, v.astype(np.float16))
        elif v.ndim == 2 and qtype != "F32":
            q = getattr(Q, qtype)
            w.add_tensor(name, gguf.quants.quantize(v, q), raw_dtype=q)
        else:
            w.add_tensor(name, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if truncate:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 2000])
    return path


def test_gguf_loading_unpermutes_and_dequantises(tiny_llama_dir, tmp_path):
    ids = jnp.asarray(np.arange(3, 15)[None])
    ref = hf.load_model(tiny_llama_dir).model
    h_ref, _ = ref(ids)
    # F32 must give the safetensors model's logits; the quantised types are checked exactly against
    # the gguf package's own dequantisation in test_formats.py.
    for qtype, tol in (("F32", 1e-5),):
        d = tmp_path / qtype
        d.mkdir()
        shutil.copy(tiny_llama_dir / "tokenizer.json", d)  # a directory with one .gguf and no config.json
        lm = hf.load_model(_write_gguf(d / "tiny.gguf", tiny_llama_dir, qtype=qtype))
        h, _ = lm.model(ids)
        err = float(np.abs(np.asarray(lm.model.logits(h)) - np.asarray(ref.logits(h_ref))).max())
        assert err < tol, (qtype, err)
    assert hf.load_model(tmp_path / "F32").path.name == "tiny.gguf"


def test_gguf_bad_files_name_the_tensor_and_type(tiny_llama_dir, tmp_path):
    trunc = _write_gguf(tmp_path / "trunc.gguf", tiny_llama_dir, truncate=True)
    with pytest.raises(ModelLoadError, match=r"tensor '[\w.]+' \(F32\).*truncated"):
        hf.load_model(trunc)
    import gguf

    # A K-quant block layout (Q4_K) that this loader does not dequantise.
    w = gguf.GGUFWriter(str(tmp_path / "q4k.gguf"), "llama")
    for k, v in (("block_count", 1), ("context_length", 64), ("embedding_length", 256), ("feed_forward_length", 256),
                 ("head_count", 4), ("vocab_size", 256)):
        getattr(w, f"add_{k}")(v)
    q = gguf.GGMLQuantizationType.Q4_K
    w.add_tensor("blk.0.ffn_up.weight", np.zeros((256, 144), np.uint8), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match=r"'blk\.0\.ffn_up\.weight' is stored as Q4_K.*supported types: F32"):
        hf.load_model(tmp_path / "q4k.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError, match="not a readable GGUF file"):
        hf.load_model(tmp_path / "junk.gguf")


def test_generation_with_and_without_cache_agree(tiny_llama_dir, smollm2_tokenizer):
    model = hf.load_model(tiny_llama_dir).model
    ids = np.asarray([[2, 2, 2, 40, 41, 42, 43], [50, 51, 52, 53, 54, 55, 56]])
    mask = (np.arange(7)[None] >= np.asarray([[3], [0]])).astype(np.int32)  # row 0 left-padded
    a = np.asarray(generate(model, ids, mask, max_new_tokens=8, use_cache=True))
    b = np.asarray(generate(model, ids, mask, max_new_tokens=8, use_cache=False))
    np.testing.assert_array_equal(a, b)
    # Left padding does not change a row's continuation.
    c = np.asarray(generate(model, ids[:1, 3:], max_new_tokens=8))
    np.testing.assert_array_equal(a[:1], c)
    # Sampling is reproducible per seed; stop strings cut the text.
    s1 = generate_text(model, smollm2_tokenizer, ["hi"], max_new_tokens=6, temperature=0.8, top_p=0.9, seed=3)
    s2 = generate_text(model, smollm2_tokenizer, ["hi"], max_new_tokens=6, temperature=0.8, top_p=0.9, seed=3)
    assert s1 == s2
    full = generate_text(model, smollm2_tokenizer, ["hi"], max_new_tokens=10)[0]
    assert len(full) > 2, full  # ten random tokens decode to more than two characters
    stop = full[2]
    cut = generate_text(model, smollm2_tokenizer, ["hi"], max_new_tokens=10, stop=[stop])[0]
    assert cut == full[: full.index(stop)] and len(cut) < len(full)
    assert generate_text(model, smollm2_tokenizer, ["hi"], max_new_tokens=10, stop=["\u2603never"])[0] == full


def test_decoder_template_tokenises_like_the_whole_string(smollm2_tokenizer):
    from autogpt_jax.inference import strip_prefix
    from autogpt_jax.prompts.templates import Template, Verbalizer

    tok = smollm2_tokenizer
    t = Template("Is this review positive or negative?\nReview: {text}{answer}The sentiment is {mask}")
    texts = ["A great film.", "dull , lifeless and far too long", ""]
    seqs, pos = t.encode(tok, texts, 128, causal=True)
    for x, s, p in zip(texts, seqs, pos):
        chat = tok.apply_chat_template([{"role": "user", "content": "Is this review positive or negative?\nReview: " + x}],
                                       tokenize=False, add_generation_prompt=True)
        assert list(s) == tok(chat + "The sentiment is", add_special_tokens=False)["input_ids"] and p == len(s) - 1
    prefix = t.causal_prefix(tok)
    suffixes, spos = strip_prefix(seqs, pos, len(prefix))
    assert all(list(s[: len(prefix)]) == list(prefix) and len(x) >= 1 for s, x in zip(seqs, suffixes))
    ids, w = Verbalizer((("negative",), ("positive",))).sequence_table(tok, leading_space=True)
    assert ids.shape == (2, 1, 1) and [tok.decode(i) for i in ids[:, 0, 0]] == [" negative", " positive"]
    from autogpt_jax.config import ConfigError

    ids, w = Verbalizer((("positive",), ("positivezq", "bad"))).sequence_table(tok, leading_space=True)
    assert ids.shape[:2] == (2, 2) and ids.shape[2] > 1 and ids[0, 0, 1] == -1 and list(w[0]) == [1.0, 0.0]
    with pytest.raises(ConfigError, match="of different classes are the same tokens"):
        Verbalizer((("good",), ("good",))).sequence_table(tok, leading_space=True)
    # Demonstrations are earlier turns of the conversation, inside the shared prefix; max_length
    # bounds each input's own part, so they do not shorten the input.
    demos = [("a gorgeous film .", "positive"), ("dull .", "negative")]
    td = t.with_demos(demos)
    long = "word " * 60
    dseqs, dpos = td.encode(tok, [texts[0], long], 80, causal=True)
    turns = []
    for x, w in demos:
        turns += [{"role": "user", "content": "Is this review positive or negative?\nReview: " + x},
                  {"role": "assistant", "content": "The sentiment is " + w}]
    turns.append({"role": "user", "content": "Is this review positive or negative?\nReview: " + texts[0]})
    chat = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert list(dseqs[0]) == tok(chat + "The sentiment is", add_special_tokens=False)["input_ids"]
    dprefix = td.causal_prefix(tok)
    assert len(dprefix) > len(prefix) + 20 and list(dseqs[0][: len(dprefix)]) == list(dprefix)
    plain = t.encode(tok, [long], 80, causal=True)[0][0]
    assert len(dseqs[1]) - len(dprefix) == len(plain) - len(prefix)


def test_shared_prefix_scoring_equals_full_sequences(tiny_llama_dir, smollm2_tokenizer):
    from autogpt_jax.inference import Classifier
    from autogpt_jax.prompts.templates import Template, Verbalizer

    model = hf.load_model(tiny_llama_dir).model
    t = Template("Review: {text}{answer}Sentiment: {mask}")
    ids, w = Verbalizer((("bad",), ("good",))).sequence_table(smollm2_tokenizer, leading_space=True)
    clf = Classifier(model, smollm2_tokenizer, ["neg", "pos"], "prompt", t, ids, w, max_length=64)
    texts = ["fine", "a long and winding review of a film " * 3, "x"]
    fast = clf.logits(texts)  # packed into rows (single-token words)
    many = [f"review number {i} " * (i % 7) for i in range(40)]
    padded = Classifier(model, smollm2_tokenizer, ["neg", "pos"], "prompt", t, ids, w, max_length=64, pack=False)
    np.testing.assert_allclose(clf.logits(many, batch_size=8), padded.logits(many, batch_size=8), atol=1e-4)
    seqs, pos = t.encode(smollm2_tokenizer, texts, 64, causal=True)
    fwd = nnx.jit(lambda m, x: m.logits(m(x)[0][0]))  # one compile for every sequence below

    def full_logits(seq):  # causal: padding on the right leaves the earlier positions unchanged
        x = np.zeros((1, 64), np.int32)
        x[0, :len(seq)] = seq
        return np.asarray(fwd(model, jnp.asarray(x)))[:len(seq)]

    for i, (s, p) in enumerate(zip(seqs, pos)):
        np.testing.assert_allclose(fast[i], full_logits(s)[p, ids[:, 0, 0]], atol=1e-4)
    # Multi-token words (two classes may share a first token, words may share a beginning): each
    # word scores its whole log-likelihood, every step's distribution taken over the words' own
    # tokens, computed in one pass with the words as a tree of continuations (shared beginnings
    # run once); a class scores the mean over its words.
    verb = Verbalizer((("terribly awful", "terribly bad indeed", "bad"), ("goodish", "good", "terribly good")))
    ids, w = verb.sequence_table(smollm2_tokenizer, leading_space=True)
    assert ids.shape[2] >= 3
    tree = objectives.table_tree(ids)
    assert tree.cont_M.shape[0] < int((ids[..., 1:] >= 0).sum())  # shared beginnings: fewer nodes than tokens
    clf = Classifier(model, smollm2_tokenizer, ["neg", "pos"], "prompt", t, ids, w, max_length=64)
    fast = clf.logits(texts)
    vocab = np.unique(ids[ids >= 0])
    for i, (s, p) in enumerate(zip(seqs, pos)):
        want = []
        for c in range(2):
            lls = []
            for word in verb.words[c]:
                wt = smollm2_tokenizer(" " + word, add_special_tokens=False)["input_ids"]
                full = np.concatenate([s[: p + 1], wt]).astype(np.int32)
                lp = np.asarray(jax.nn.log_softmax(jnp.asarray(full_logits(full)[:, vocab]), -1))
                lls.append(sum(lp[p + j, np.searchsorted(vocab, t_)] for j, t_ in enumerate(wt)))
            want.append(np.mean(lls))
        np.testing.assert_allclose(fast[i], want, atol=1e-4)


@pytest.mark.multidevice  # packed rows and the shared prefix, batches split over 8 devices
def test_decoder_pipeline_with_lora_exports_for_pytorch_and_peft(tiny_llama_dir, tmp_path, capsys):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from autogpt_jax.config import load_config
    from autogpt_jax.pipeline import run_pipeline
    from autogpt_jax.export_format import load_classifier
    from autogpt_jax.inference import predict_records

    out = tmp_path / "run"
    cfg = load_config(["--config_path", "tests/configs/tiny_fewshot.yaml", "--output_dir", str(out),
                       "--model.name_or_path", str(tiny_llama_dir),
                       "--prompt.template", "Review: {text}{answer}The sentiment is {mask}",
                       "--peft.method", "lora", "--peft.targets", "query,value,gate", "--finetune.learning_rates", "1e-3",
                       "--finetune.mlm_weight", "0.5", "--prompt.demonstrations", "1",
                       "--model.scan_layers", "true"])  # scanned layers through the whole pipeline, on 8 devices
    run = run_pipeline(cfg, return_run=True)
    rep = json.loads((out / "report.json").read_text())["seeds"][0]
    # One demonstration per class, from the training split, with its class's label word.
    words = [w for ws in rep["prompt"]["label_words"] for w in ws]
    assert len(rep["prompt"]["demonstrations"]) == 2 and {d[1] for d in rep["prompt"]["demonstrations"]} <= set(words)
    assert run.classifier.template.demos == tuple(map(tuple, rep["prompt"]["demonstrations"]))
    assert rep["prompt"]["scoring"] == "next_token" and rep["adapt"]["objective"] == "clm"
    assert rep["prompt"]["label_word_candidates"]  # the label-word search ran on the decoder
    assert rep["finetune"]["chosen"]["trainable_parameters"] == 2 * 8 * ((32 + 32) + (32 + 16) + (32 + 64))
    texts = ["a moving, beautifully acted film", "dull and lifeless", "", "\u2603"]
    mem = run.classifier.probabilities(texts)
    clf = load_classifier(out / "export")
    loaded = predict_records(clf, texts)
    labels = json.loads((out / "export" / "autogpt_jax.json").read_text())["labels"]
    np.testing.assert_allclose([[r["probabilities"][l] for l in labels] for r in loaded], mem, atol=1e-5)
    # The merged export is a LlamaForCausalLM; the unmerged LoRA loads in PyTorch peft: same next-token logits.
    seqs, pos = clf.template.encode(clf.tokenizer, texts[:2], 64, causal=True)
    merged = AutoModelForCausalLM.from_pretrained(str(out / "export")).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)).eval()
    peft_model = PeftModel.from_pretrained(base, str(out / "export" / "peft_adapter")).eval()
    for s, p in zip(seqs, pos):
        h, _ = run.model(jnp.asarray(s[None]))
        ours = np.asarray(run.model.logits(h[0, p]))
        with torch.no_grad():
            for pt in (merged, peft_model):
                ref = pt(torch.tensor(s[None].astype(np.int64))).logits[0, p].numpy()
                np.testing.assert_allclose(ours, ref, atol=1e-4)
    from autogpt_jax.predict import main as predict_main

    capsys.readouterr()
    assert predict_main(["--model_dir", str(out / "export"), "--text", "a fine film"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["probabilities"] == pytest.approx(predict_records(clf, ["a fine film"])[0]["probabilities"], abs=1e-6)


@pytest.mark.slow  # a whole pipeline run
def test_decoder_template_search_uses_chat_candidates(tiny_llama_dir, tmp_path):
    from autogpt_jax.config import load_config
    from autogpt_jax.pipeline import run_pipeline
    from autogpt_jax.prompts.templates import CHAT_TEMPLATES, fill_task, rule_prompts

    templates, verb = rule_prompts("sentiment", ["negative", "positive"], decoder=True, chat=True)
    sentiment = [fill_task(t, verb, None) for t in CHAT_TEMPLATES["sentiment"]]
    assert templates[:3] == sentiment and verb.words == (("negative",), ("positive",))
    assert "negative or positive" in sentiment[0]
    assert rule_prompts("sentiment", ["rotten", "fresh"], decoder=False, chat=False)[1].words == (("terrible",), ("great",))
    cfg = load_config(["--config_path", "tests/configs/tiny_fewshot.yaml", "--output_dir", str(tmp_path / "run"),
                       "--model.name_or_path", str(tiny_llama_dir), "--stages", "prompt,evaluate",
                       "--prompt.candidates", "2", "--prompt.search_steps", "2", "--prompt.task_type", "sentiment"])
    rep = run_pipeline(cfg)["seeds"][0]["prompt"]
    assert [c["template"] for c in rep["template_candidates"]] != [] and \
        {c["template"] for c in rep["template_candidates"]} <= set(sentiment)
    assert rep["template"] in sentiment[:2] and rep["scoring"] == "next_token"


@pytest.mark.slow  # a whole pipeline run
def test_backbone_selection_runs_the_candidate_with_the_best_dev_accuracy(tiny_llama_dir, tmp_path):
    import yaml

    from autogpt_jax.config import ConfigError, load_config
    from autogpt_jax.pipeline import run_pipeline

    base = yaml.safe_load(open("tests/configs/tiny_fewshot.yaml"))
    enc = {**base, "stages": "prompt,finetune,evaluate", "eval": {"compare": False, "batch_size": 64}}
    dec = {**enc, "model": {"name_or_path": str(tiny_llama_dir)},
           "prompt": {**base["prompt"], "template": "Review: {text}{answer}The sentiment is {mask}",
                      "label_words": "negative=terribly bad|positive=goodish"}}  # multi-token words: trained as sequences
    paths = []
    for name, c in (("enc", enc), ("dec", dec)):
        paths.append(tmp_path / f"{name}.yaml")
        paths[-1].write_text(yaml.safe_dump(c))
    out = tmp_path / "run"
    selector = tmp_path / "select.yaml"
    selector.write_text(yaml.safe_dump({"data": base["data"], "select": {"configs": ",".join(map(str, paths)), "steps": 4}}))
    cfg = load_config(["--config_path", str(selector), "--output_dir", str(out)])
    rep = run_pipeline(cfg)
    sel = rep["backbone_selection"]
    assert [c["config"] for c in sel["candidates"]] == list(map(str, paths))
    assert all(c["steps"] == 4 and 0.0 <= c["dev_accuracy"] <= 1.0 and c["dev_log_loss"] > 0
               for c in sel["candidates"])
    best = max(sel["candidates"], key=lambda c: (c["dev_accuracy"], -c["dev_log_loss"]))
    assert sel["chosen"] == best["config"] and rep["model"] == best["model"] == sel["model"]
    assert rep["stages"] == ["prompt", "finetune", "evaluate"] and "accuracy" in rep["seeds"][0]["test"]
    assert json.loads((out / "report.json").read_text())["backbone_selection"] == sel
    # Stages set on the selecting config apply to the chosen candidate.
    rep2 = run_pipeline(load_config(["--config_path", str(selector), "--output_dir", str(tmp_path / "run2"),
                                     "--select.steps", "2", "--stages", "prompt,evaluate"]))
    assert rep2["stages"] == ["prompt", "evaluate"] and "finetune" not in rep2["seeds"][0]
    # A screen that is exactly the winner's first grid point (own steps, fixed prompt, no adapt) is reused.
    rep3 = run_pipeline(load_config(["--config_path", str(selector), "--output_dir", str(tmp_path / "run3"),
                                     "--select.configs", str(paths[1]), "--select.steps", "0"]))
    screen, ft = rep3["backbone_selection"]["candidates"][0], rep3["seeds"][0]["finetune"]["chosen"]
    assert screen["steps"] == dec["finetune"]["steps"] and "reused" in ft
    assert ft["best_dev_accuracy"] == screen["dev_accuracy"] == rep3["seeds"][0]["dev"]["accuracy"]
    nested = tmp_path / "nested.yaml"
    nested.write_text(yaml.safe_dump({**enc, "select": {"configs": str(paths[0])}}))
    with pytest.raises(ConfigError, match="selects among candidates itself"):
        run_pipeline(load_config(["--config_path", str(selector), "--output_dir",
                                  str(tmp_path / "n"), "--select.configs", str(nested)]))


def test_packed_decoder_batches_give_the_unpacked_loss_and_gradients(tiny_llama_dir, smollm2_tokenizer):
    from autogpt_jax.data import batching
    from autogpt_jax.inference import prompt_inputs
    from autogpt_jax.prompts.templates import Template, Verbalizer
    from autogpt_jax.training import objectives

    model = hf.load_model(tiny_llama_dir).model
    tok = smollm2_tokenizer
    t = Template("Review: {text}{answer}The sentiment is {mask}")
    texts = ["fine", "a long and winding review of a film " * 3, "x", "not good at all", "great", "meh " * 9]
    seqs, mpos, prefix = prompt_inputs(tok, model, t, texts, 64)
    labels = np.asarray([0, 1, 0, 0, 1, 1], np.int32)
    ids, w = Verbalizer((("bad",), ("good",))).sequence_table(tok, leading_space=True)
    fields = {"mask_pos": mpos, "labels": labels}
    idx = np.asarray([5, 1, 0, 3, 2, 4])
    plain = batching.ExampleBatches(seqs, fields, 6, 0, pad_id=0).batch(idx)
    packed = batching.PackedExampleBatches(seqs, fields, 6, 0, pad_id=0, row_len=64).batch(idx)
    assert packed["input_ids"].shape[0] < len(idx) and packed["attention_mask"].sum() == plain["attention_mask"].sum()
    loss = objectives.make_cloze_loss(ids, w, prefix)
    gd, params, rest = nnx.split(model, nnx.Param, ...)

    def f(p, b):
        return loss(nnx.merge(gd, p, rest), {k: jnp.asarray(v) for k, v in b.items()})[0]

    vg = jax.jit(jax.value_and_grad(f))
    (l1, g1), (l2, g2) = vg(params, plain), vg(params, packed)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # Gradients flow through the shared prefix (run once per batch into a cache) as through whole
    # sequences: the same loss and gradients as the full prompts with no prefix split off.
    full_seqs, full_pos = t.encode(tok, texts, 64, causal=True)
    assert prefix is not None and len(full_seqs[0]) == len(seqs[0]) + len(prefix)
    whole = batching.ExampleBatches(full_seqs, {"mask_pos": full_pos, "labels": labels}, 6, 0, pad_id=0).batch(idx)
    whole_loss = objectives.make_cloze_loss(ids, w, None)
    l3, g3 = jax.jit(jax.value_and_grad(lambda p, b: whole_loss(nnx.merge(gd, p, rest),
                                                                {k: jnp.asarray(v) for k, v in b.items()})[0]))(params, whole)
    np.testing.assert_allclose(l3, l1, rtol=1e-5)
    g1_flat = dict(jax.tree_util.tree_flatten_with_path(g1)[0])
    for path, g in jax.tree_util.tree_flatten_with_path(g3)[0]:
        np.testing.assert_allclose(g1_flat[path], g, atol=1e-5, err_msg=jax.tree_util.keystr(path))
    only_prefix = sorted(set(map(int, prefix)) - {int(x) for s_ in seqs for x in s_})
    assert only_prefix  # tokens that occur only in the prefix receive gradient through its cache
    assert np.abs(np.asarray(g1["embed_tokens"]["embedding"][...])[only_prefix]).sum() > 0
    with pytest.raises(ValueError, match="does not fit a packed row"):
        batching.PackedExampleBatches(seqs, fields, 6, 0, pad_id=0, row_len=8)
