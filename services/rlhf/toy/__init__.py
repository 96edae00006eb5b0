"""The toy world: a tiny model, a synthetic task with a hidden rule, and services as local processes.

Everything runs offline on a CPU in seconds; the demo, the tests and the benchmarks are built on it.

tiny.py       a small GPT-2 and its BPE tokenizer, made from a config (`rlhf tiny-model`)
synthetic.py  the synthetic task, its data files and its ground-truth reward (`rlhf data synth`)
processes.py  `rlhf serve ...` as local subprocesses: start, wait for SERVING, stop
cli.py        the `rlhf tiny-model` and `rlhf data synth` commands
"""
