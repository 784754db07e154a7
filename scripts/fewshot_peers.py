"""The peers of scripts/bench_fewshot.py, on the same splits as our pipeline: the logistic probe on
frozen MiniLM embeddings, PyTorch head fine-tuning, SetFit, and ``TorchDecoder`` (PyTorch
transformers + peft on the decoder's GGUF weights). torch, transformers, setfit, sklearn and peft
are imported where they are used: each peer is optional."""

from __future__ import annotations

import os
import tempfile
import time

import jax.numpy as jnp
import numpy as np

from autogpt_jax.data import batching


def embed(lm, tok, texts, batch=64):
    """Mean-pooled embeddings of ``texts`` from the frozen model of ``lm`` (a loaded checkpoint)."""
    seqs = batching.encode(tok, list(texts), 128)
    out = np.zeros((len(seqs), lm.config.hidden_size), np.float32)
    for idx, b in batching.eval_batches(seqs, batch, tok.pad_token_id or 0):
        h = lm.model(jnp.asarray(b["input_ids"]), jnp.asarray(b["attention_mask"]))
        p = np.asarray(lm.model.pool(h, jnp.asarray(b["attention_mask"]), "mean"))
        real = idx >= 0
        out[idx[real]] = p[real]
    return out


def linear_probe(lm, tok, train, test_x, test_y) -> float:
    """Test accuracy of logistic regression (scikit-learn) on the frozen embeddings of ``train``."""
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(max_iter=2000).fit(embed(lm, tok, train["text"]), np.asarray(list(train["label"])))
    return float(probe.score(test_x, test_y))


def torch_head_ft(model_dir, train, dev, test, lrs, steps, batch, seed):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tok = AutoTokenizer.from_pretrained(str(model_dir))

    def enc(ds):
        e = tok(list(ds["text"]), padding=True, truncation=True, max_length=64, return_tensors="pt")
        return e, torch.tensor(list(ds["label"]))

    (xtr, ytr), (xdv, ydv), (xte, yte) = enc(train), enc(dev), enc(test)

    def acc(model, x, y):
        model.eval()
        preds = []
        with torch.inference_mode():
            for i in range(0, len(y), 128):
                preds.append(model(**{k: v[i:i + 128] for k, v in x.items()}).logits.argmax(-1))
        model.train()
        return float((torch.cat(preds) == y).float().mean())

    best = (-1.0, None)
    for lr in lrs:
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=2).train()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        g = torch.Generator().manual_seed(seed)
        best_dev, best_state = -1.0, None
        for step in range(1, steps + 1):
            idx = torch.randint(0, len(ytr), (batch,), generator=g)
            loss = model(**{k: v[idx] for k, v in xtr.items()}, labels=ytr[idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 10 == 0:
                d = acc(model, xdv, ydv)
                if d >= best_dev:
                    best_dev, best_state = d, {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(best_state)
        if best_dev > best[0]:
            best = (best_dev, acc(model, xte, yte))
    return best[1]


def setfit_status(skip_torch: bool) -> tuple[bool, str]:
    """Whether SetFit runs here, and the note the table prints about it."""
    try:
        import setfit
    except ImportError:
        return False, "SetFit: not installed here (not run); pip install setfit"
    return not skip_torch, f"SetFit {setfit.__version__} (pip install setfit; not an extra)"


def setfit_run(model_dir, train, test, seed, workdir, return_pred: bool = False):
    """SetFit (contrastive fine-tuning of the sentence encoder, then a logistic-regression head) with
    its documented few-shot defaults: 20 pair iterations per example, batch 16, one epoch."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from setfit import SetFitModel, Trainer, TrainingArguments
    from sklearn.linear_model import LogisticRegression

    torch.set_num_threads(os.cpu_count() or 1)
    word = models.Transformer(str(model_dir), max_seq_length=64)
    body = SentenceTransformer(modules=[word, models.Pooling(word.get_word_embedding_dimension(), "mean"),
                                        models.Normalize()], device="cpu")
    model = SetFitModel(model_body=body, model_head=LogisticRegression(max_iter=2000))
    args = TrainingArguments(output_dir=tempfile.mkdtemp(dir=workdir), batch_size=16, num_iterations=20,
                             num_epochs=1, seed=seed, report_to="none", show_progress_bar=False, save_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=train.select_columns(["text", "label"]))
    trainer.train()
    pred = np.asarray(model.predict(list(test["text"]), batch_size=128))
    if return_pred:
        return pred
    return float((pred == np.asarray(list(test["label"]))).mean())


def _lora_config():
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


class TorchDecoder:
    """The peer: PyTorch transformers (+ peft LoRA) on the same GGUF weights and the same token ids."""

    def __init__(self, gguf_path, label_ids):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(os.cpu_count() or 1)
        self.torch = torch
        self.base = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                         dtype=torch.float32).eval()
        self.label_ids = torch.tensor(np.asarray(label_ids, np.int64))

    def _batch(self, seqs, pos, idx):
        t = self.torch
        L = max(len(seqs[i]) for i in idx)
        ids = t.full((len(idx), L), 2, dtype=t.long)
        mask = t.zeros((len(idx), L), dtype=t.long)
        for r, i in enumerate(idx):
            ids[r, :len(seqs[i])] = t.tensor(seqs[i].astype(np.int64))
            mask[r, :len(seqs[i])] = 1
        return ids, mask, t.tensor(np.asarray([pos[i] for i in idx], np.int64))

    def _lora_model(self):
        import copy

        from peft import get_peft_model

        return get_peft_model(copy.deepcopy(self.base), _lora_config())

    def class_logits(self, model, ids, mask, p):
        logits = model(input_ids=ids, attention_mask=mask).logits  # B × L × V, as a PEFT user computes it
        return logits[self.torch.arange(ids.shape[0]), p][:, self.label_ids]

    def predict(self, model, seqs, pos, batch=32):
        t = self.torch
        model.eval()
        order = np.argsort([len(x) for x in seqs])
        out = np.zeros(len(seqs), np.int64)
        with t.inference_mode():
            for i in range(0, len(order), batch):
                idx = order[i:i + batch]
                out[idx] = self.class_logits(model, *self._batch(seqs, pos, idx)).argmax(-1).numpy()
        return out

    def lora(self, train, dev, lrs, steps, batch, seed, eval_every):
        """Best-dev LoRA fine-tuning over the lr grid; returns (model at its best dev step, dev acc)."""
        t = self.torch
        (xs, ps, ys), (dxs, dps, dys) = train, dev
        best = (-1.0, None)
        for lr in lrs:
            t.manual_seed(seed)
            model = self._lora_model()
            opt = t.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
            sched = t.optim.lr_scheduler.LambdaLR(opt, lambda s_: 1.0 - s_ / steps)
            rng = np.random.default_rng(seed)
            order, k = rng.permutation(len(ys)), 0
            best_dev, best_state = -1.0, None
            for step in range(1, steps + 1):
                if k + batch > len(order):
                    order, k = rng.permutation(len(ys)), 0
                idx = order[k:k + batch]
                k += batch
                model.train()
                ids, mask, p = self._batch(xs, ps, idx)
                loss = t.nn.functional.cross_entropy(self.class_logits(model, ids, mask, p), t.tensor(ys[idx]).long())
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                if step % eval_every == 0:
                    d = float((self.predict(model, dxs, dps) == dys).mean())
                    if d >= best_dev:
                        best_dev = d
                        best_state = {n: v.detach().clone() for n, v in model.named_parameters() if v.requires_grad}
            if best_dev > best[0]:
                with t.no_grad():
                    for n, v in model.named_parameters():
                        if n in best_state:
                            v.copy_(best_state[n])
                best = (best_dev, model)
        return best[1], best[0]

    def step_seconds(self, xs, ps, ys, batches):
        """Mean seconds of a LoRA training step over ``batches`` (index arrays), after one untimed
        pass over the same batches."""
        t = self.torch
        model = self._lora_model().train()
        opt = t.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        times = []
        for timed in (False, True):
            for idx in batches:
                ids, mask, p = self._batch(xs, ps, idx)
                t0 = time.perf_counter()
                loss = t.nn.functional.cross_entropy(self.class_logits(model, ids, mask, p), t.tensor(ys[idx]).long())
                opt.zero_grad()
                loss.backward()
                opt.step()
                if timed:
                    times.append(time.perf_counter() - t0)
        return float(np.mean(times))
