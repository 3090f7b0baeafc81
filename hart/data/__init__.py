"""Data at the bottom layer (beside the plumbing of :mod:`hart.common`): the dataset specs and
datasets (:mod:`hart.data.datasets`: the grammar and batches; :mod:`hart.data.sources`: the
named datasets; :mod:`hart.data.files`: a user's image folders), the `shapes` scenes and renderer
(:mod:`hart.data.shapes`) and their prompt language (:mod:`hart.data.prompts`), and the emoji
renderer (:mod:`hart.data.emoji`)."""
