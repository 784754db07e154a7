"""The summary a run prints: model, pretraining, test accuracy over the split seeds against the
baselines, the prompt, hand-over, retrieval, where the export went."""

from __future__ import annotations


def print_report(report: dict) -> None:
    """What ``python -m autogpt_jax.train`` prints at the end of a run."""
    lines = [f"model: {report.get('model')} ({report.get('parameters', 0):,} parameters) on "
             f"{report['devices']['count']} {report['devices']['platform']} device(s), mesh {report['devices']['mesh']}"]
    sel = report.get("backbone_selection")
    if sel:
        screened = ", ".join(f"{c['config']} {100 * c['dev_accuracy']:.1f} ({c['steps']} steps, loss "
                             f"{c['dev_log_loss']:.3f})" for c in sel["candidates"])
        skipped = "; ".join(f"{c['config']} skipped ({c['reason']})" for c in sel.get("skipped", []))
        lines.append(f"backbone: {sel['model']} ({sel['chosen']})"
                     + (f"; screen dev accuracy %: {screened}" if screened else "") + (f"; {skipped}" if skipped else ""))
        combo = sel.get("combination")
        if combo:
            lines.append(f"combination of the screened candidates: dev accuracy {100 * combo['dev_accuracy']:.1f}% "
                         + ("(at least the best one's)" if combo["holds_on_dev"] else "(below the best one's)")
                         + (": every candidate trained, exported as one ensemble" if combo["chosen"]
                            else ": the best one alone"))
    pre = report.get("pretrain")
    if pre:
        first, best = pre.get("first_eval_loss"), (pre.get("best") or {}).get("eval_loss")
        lines.append(f"pretrain ({pre['objective']}): {pre['steps']} steps, final train loss {pre['final_loss']:.4f}"
                     + (f", eval loss {first:.4f} -> {best:.4f}" if first is not None and best is not None else "")
                     + f", {pre['tokens_per_s']:,.0f} tokens/s, {pre['wall_time_s']:.0f} s")
    summ = report.get("summary") or {}
    if summ:
        def fmt(key):
            v = summ.get(key)
            return "-" if not v else f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}" + (f" (n={v['n']})" if v["n"] > 1 else "")

        rows = [("zero-shot prompt", "zero_shot_accuracy"), ("zero-shot prompt after adapt", "zero_shot_after_adapt_accuracy"),
                ("head fine-tuning", "head_ft_accuracy"), ("prompt fine-tuning", "prompt_ft_accuracy"),
                ("this run (" + ",".join(s for s in report["stages"] if s in ("prompt", "adapt", "finetune", "selftrain"))
                 + ")", "test_accuracy"), ("distilled student", "student_test_accuracy")]
        rows = [(n, fmt(k)) for n, k in rows if k in summ]
        if rows:  # a run without evaluate or baselines may have measured nothing on test
            w = max(len(n) for n, _ in rows)
            lines.append(f"test accuracy (%), {len(report.get('seeds', []))} split seed(s):")
            lines += [f"  {n:<{w}}  {v}" for n, v in rows]
        # the exported seed's prompt (data.split_seed when it ran)
        last = next((s for s in report["seeds"] if s["seed"] == report.get("exported_seed")), report["seeds"][-1])
        if last.get("classes"):
            names = last["classes"]
            lines.append(f"classes ({len(names)}): " + ", ".join(names[:20]) + (", ..." if len(names) > 20 else ""))
        ft = last.get("finetune") or {}
        if ft.get("screened"):
            lines.append(f"recipe: {ft['mode']} (dev accuracy %: " + ", ".join(
                f"{n} {100 * r['best_dev_accuracy']:.1f}" for n, r in ft["screened"].items()) + ")"
                + (f"; trained again on all {ft['refit']['rows']} labelled rows" if ft.get("refit") else ""))
        elif ft.get("refit"):
            lines.append(f"trained again on all {ft['refit']['rows']} labelled rows after choosing on dev")
        if last.get("members"):
            lines.append("ensemble of " + ", ".join(
                f"{m['model']} (weight {m['weight']:.2f}" + (f", test {100 * m['test']:.1f}%" if m.get("test") is not None
                                                              else "") + ")" for m in last["members"]))
        if "dev" in last and "test" not in last:
            lines.append(f"dev accuracy {100 * last['dev']['accuracy']:.1f}% (no --data.test_file: no test figure)")
        if last.get("prompt") and ft.get("mode", "prompt") not in ("probe", "setfit"):
            words = last["prompt"]["label_words"]
            shown = str(words) if len(words) <= 8 else f"{str(words[:6])[:-1]}, ... ({len(words)} classes)]"
            lines.append(f"prompt: {last['prompt']['template']!r}, label words {shown}")
        if "test_macro_f1" in summ:
            lines.append(f"macro-F1: {fmt('test_macro_f1')}")
        ho = last.get("handover")
        if ho:
            t = ho["test"]
            lines.append(f"hand-over below confidence {ho['threshold']:.3f} (temperature {ho['temperature']:.2f}, "
                         f"{ho['threshold_source']}): in-scope accuracy {fmt('handover_in_scope_accuracy')} "
                         f"({100 * t['in_scope_answered']:.1f}% answered)"
                         + (f", out-of-scope recall {fmt('handover_out_of_scope_recall')} on "
                            f"{t['out_of_scope_queries']} {ho['out_of_scope']} queries" if "out_of_scope_recall" in t else ""))
    data = (report.get("config") or {}).get("data") or {}
    if (data.get("unlabeled_file") or data.get("unlabeled")) and "adapt" not in report.get("stages", []):
        lines.append("unlabelled text: not used for adaptation (this recipe's adapt.steps is 0, or --stages has no adapt)")
    if report.get("levers"):
        lines.append("levers: " + "; ".join(f"{k} {v}" if not isinstance(v, dict) else
                                            f"{k} ({', '.join(f'{a} {b}' for a, b in v.items())})"
                                            for k, v in report["levers"].items()))
    ret = report.get("retrieval")
    if ret:
        b, a = ret["before"], ret.get("after", ret["before"])
        lines.append(f"retrieval ({ret['held_out_questions']} held-out questions, {ret['answers']} answers): "
                     f"Recall@1 {100 * b['recall@1']:.1f} -> {100 * a['recall@1']:.1f}, Recall@5 {100 * b['recall@5']:.1f} -> "
                     f"{100 * a['recall@5']:.1f}, MRR {b['mrr']:.3f} -> {a['mrr']:.3f} after "
                     f"{(ret.get('train') or {}).get('steps', 0)} contrastive steps")
    if report.get("export"):
        seed = report["export"].get("seed")
        lines.append(f"export: {report['export']['dir']}" + (f" (split seed {seed})" if seed is not None else "")
                     + f"; predict with: python -m autogpt_jax.predict --model_dir {report['export']['dir']} --text \"...\"")
    print("\n".join(lines))
