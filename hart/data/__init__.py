"""Data at the bottom layer (beside the plumbing of :mod:`hart.common`): the dataset specs and
datasets (:mod:`hart.data.datasets`), the `shapes` grammar and renderer
(:mod:`hart.data.shapes`) and the emoji renderer (:mod:`hart.data.emoji`)."""
