"""Evaluation: Frechet distances and their feature nets (:mod:`sampling.eval.fid`,
:mod:`sampling.eval.features`), prompt alignment with the `shapes` checker
(:mod:`sampling.eval.alignment`, :mod:`sampling.eval.checker`) and the residual probe
(:mod:`sampling.eval.residual`). ``hart eval-tokenizer`` lives with the tokenizer."""
