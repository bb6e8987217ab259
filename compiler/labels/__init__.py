"""Reference labels for training and evaluation: the label table and the rule-based labeller."""
