"""Experiments: the toy and the natural-language experiments behind one protocol
(`base.Experiment`), and the one runner that takes either through probe → baseline →
sweep → evaluate → report (`runner.run_experiment`)."""
