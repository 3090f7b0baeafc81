"""What a generator run trains: its config (a preset fitted to the tokenizer and the data, an
``--init`` folder's, or a resumed run's own, with the head flags checked against it), the
weights it starts from, and the tokenizer copy it keeps. Used by :mod:`hart.train`.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from hart.common.errors import UserError
from hart.common.io import CONFIG_NAME, WEIGHTS_NAME, atomic_dir, component_dir, read_weights, resolve_dir
from hart.common.loop import check_preset, check_resume_flags, run_meta
from hart.config import GeneratorConfig, HeadConfig
from hart.model import HARTGenerator
from hart.tokens import tokenizer_fingerprint
from tokenizer import HybridTokenizer


def generator_dir(folder) -> Path:
    """A generator folder: ``folder/generator`` of a model folder, or ``folder`` itself."""
    return component_dir(folder, "generator")


def init_weights(model: HARTGenerator, folder, verbose: bool = True, skip: tuple[str, ...] = (),
                 adapt: dict | None = None) -> list[str]:
    """Load the tensors of ``folder``'s generator whose names exist in ``model``; the rest start fresh.

    A tensor of another shape is refused with one line. Names starting with a ``skip`` prefix
    are not loaded (a head of another size: ``("diffusion.",)``); ``adapt`` maps a name to a
    function that makes the loaded tensor fit (the class embedding of other classes:
    :func:`class_embedding`). Returns the names that start fresh.
    """
    src = {k: v for k, v in read_weights(generator_dir(folder) / WEIGHTS_NAME).items() if not k.startswith(skip)}
    for k, fit in (adapt or {}).items():
        if k in src:
            src[k] = fit(src[k])
    own = model.state_dict()
    bad = [f"{k} {tuple(v.shape)} (here {tuple(own[k].shape)})" for k, v in src.items()
           if k in own and v.shape != own[k].shape]
    if bad:
        raise UserError(f"--init {folder}: shapes differ from the chosen preset: {', '.join(bad[:4])}"
                        + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else ""))
    model.load_state_dict({k: v for k, v in src.items() if k in own}, strict=False)
    fresh = sorted(k for k in own if k not in src)
    if verbose:
        heads = sorted({k.split(".")[0] for k in fresh})
        print(f"--init {folder}: loaded {len(own) - len(fresh)} tensors"
              + (f"; starting fresh: {', '.join(heads)} ({len(fresh)} tensors)" if fresh else ""))
    return fresh


def resolve_config(args, out: Path, tokenizer: HybridTokenizer, classes, verbose: bool = True) -> GeneratorConfig:
    config = _resolve_config(args, out, tokenizer, classes)
    captioned = classes is None
    if config.is_text and not captioned:
        raise UserError(f"{'--preset ' + args.preset if args.preset else 'this model'} is a text-to-image model: it needs "
                        "captioned data (captions:PATH, shapes, emoji), and this data has no captions")
    if not config.is_text and captioned:
        raise UserError("this data has captions, not classes: choose a text preset (--preset shapes-t2i)")
    if not config.is_text and not classes:
        raise UserError("the data has no class names, and a class-conditional model needs them: give folder:PATH "
                        "(one subfolder per class); images:PATH has no classes")
    check_token_layout(config, tokenizer, args)
    if args.init and not args.resume:
        init = HARTGenerator.load_config(generator_dir(args.init))
        check_token_layout(init, tokenizer, args)  # with --preset too: the weights come from it
        if not config.is_text:
            config = fit_classes(config, init, classes, args, verbose)
    return config


def check_token_layout(config: GeneratorConfig, tokenizer: HybridTokenizer, args) -> None:
    """One line, before anything is written, when the generator reads another token layout
    (scales, codebook, latent channels) than ``--tokenizer`` writes."""
    tc = tokenizer.config
    ours = (tuple(config.patch_nums), config.codebook_size, config.z_channels)
    theirs = (tuple(tc.patch_nums), tc.codebook_size, tc.z_channels)
    if ours != theirs:
        what = f"--init {args.init}" if args.init and not args.resume else "the run's generator"
        raise UserError(f"{what} reads scales {list(ours[0])}, {ours[1]} codes of {ours[2]} channels, and --tokenizer "
                        f"{args.tokenizer} writes scales {list(theirs[0])}, {theirs[1]} codes of {theirs[2]} channels: "
                        "give the tokenizer the generator was trained with (its model folder's tokenizer/)")


def class_rows(init: GeneratorConfig, config: GeneratorConfig) -> list:
    """For each class of ``config`` (a run's, fitted to its data), the row of the ``--init``
    model's class embedding it continues, or None (a class new to it): by name where that model
    names its classes, else by index when it has as many."""
    own = {n.lower(): i for i, n in enumerate(init.display.class_names or ())}
    if own:  # any case, as class names are read everywhere
        return [own.get(n.lower()) for n in (config.display.class_names or ())]
    return list(range(config.num_classes)) if init.num_classes == config.num_classes else [None] * config.num_classes


def same_classes(init: GeneratorConfig, config: GeneratorConfig) -> bool:
    """Whether ``config``'s classes are the ``--init`` model's own, row for row."""
    return init.num_classes == config.num_classes and class_rows(init, config) == list(range(init.num_classes))


def class_embedding(loaded, rows: list, own):
    """The class embedding (K + 1, C) of a run's K classes from the ``--init`` model's
    ``loaded`` (M + 1, C): row i is ``loaded[rows[i]]``, or ``own[i]`` (freshly initialised)
    for a class new to it; the last (the null class of guidance) is ``loaded``'s last."""
    import torch

    if loaded.shape[1:] != own.shape[1:]:  # another width: left to init_weights' one-line shape refusal
        return loaded
    picked = [loaded[r] if r is not None else own[i].to(loaded) for i, r in enumerate(rows)]
    return torch.stack(picked + [loaded[-1]])


def fit_classes(config: GeneratorConfig, init: GeneratorConfig, classes, args, verbose: bool = True) -> GeneratorConfig:
    """A class model started from ``--init`` on data with its own ``classes``: the data's
    classes (number and names). The class embedding follows them (:func:`class_rows`): a class
    the model knows by name keeps its row, a new one starts fresh, the null class stays; said
    in one line when they are not the model's own, row for row."""
    names = tuple(classes)
    fitted = config.replace(num_classes=len(names), display=config.display.replace(class_names=names))
    if same_classes(init, fitted):
        if verbose and not init.display.class_names:  # a converted ImageNet VAR on 1,000 class folders, say
            print(f"--init {args.init} names no classes: the data's {len(names)} continue its rows in order "
                  f"({names[0]} is its class 0)")
        return fitted
    new = [n for n, r in zip(names, class_rows(init, fitted)) if r is None]
    shown = ", ".join(new[:5]) + (" ..." if len(new) > 5 else "")
    if args.freeze_transformer and new:
        raise UserError(f"--freeze-transformer keeps --init {args.init}'s class embedding as it is, and {len(new)} of "
                        f"the data's classes are new to it ({shown}); train on its own classes, or without "
                        "--freeze-transformer")
    if verbose:
        print(f"--init {args.init}: the data's {len(names)} classes "
              + (f"are new to its {init.num_classes}: their rows of the class embedding start fresh" if len(new) == len(names)
                 else f"continue its rows by name; {len(new)} new ({shown}) start fresh" if new
                 else "continue its rows by name"))
    return fitted


def _resolve_config(args, out: Path, tokenizer: HybridTokenizer, classes) -> GeneratorConfig:
    """New run: the preset (or --init's config), fitted to the tokenizer and the data.
    Resume: the saved config."""
    tc = tokenizer.config
    if args.freeze_transformer and not (args.init or args.resume):
        raise UserError("--freeze-transformer needs --init DIR: the trained transformer to put a head on")
    meta = run_meta(out, args.resume, "generator")
    if meta is not None:
        if args.init:
            raise UserError("--resume continues from the run's own checkpoint; drop --init")
        # before the preset is fitted to what may be other data; a run that recorded what it trains
        # on has that compared instead of the --data text (hart.batches.check_same_data)
        check_resume_flags(meta, args, out, skip=("data",) if meta.get("source") else ())
        saved = GeneratorConfig.from_dict(meta["config"])
        if bool(meta.get("freeze_transformer", False)) != args.freeze_transformer:
            flag = "with" if meta.get("freeze_transformer") else "without"
            raise UserError(f"the run in {out} was started {flag} --freeze-transformer; resume it the same way")
        # the preset gives the transformer's shape; the sections are the run's own
        fitted = args.preset and fit_preset(args.preset, tc, classes, args).replace(
            head=saved.head, stats=saved.stats, display=saved.display, training=saved.training)
        check_preset(args.preset, fitted, saved, out)
        if args.residual_target and (args.residual_target == "sampled") != saved.training.residual_from_sampled:
            was = "sampled" if saved.training.residual_from_sampled else "true"
            raise UserError(f"the run in {out} trains the head on --residual-target {was}; resume it the same way")
        for name, value in flag_values(saved).items():
            if getattr(args, name, None) and getattr(args, name) != value:
                raise UserError(f"the run in {out} has --{name.replace('_', '-')} {value}; resume it the same way")
        return saved
    if args.init and not args.preset:
        config = HARTGenerator.load_config(generator_dir(args.init))
    else:
        config = fit_preset(args.preset or "fm-s", tc, classes, args)
        if args.init:
            init = HARTGenerator.load_config(generator_dir(args.init))
            if init.is_text != config.is_text:
                kinds = {True: "a text-to-image model", False: "a class-conditional model"}
                raise UserError(f"--init {args.init} is {kinds[init.is_text]} and --preset {args.preset} "
                                f"{kinds[config.is_text]}: --init starts from a model of the same kind")
    if not config.has_head and any(getattr(args, n, None) for n in ADDS_A_HEAD):
        config = config.replace(head=HeadConfig())  # a head added (HART's MLP unless the flags say otherwise)
    if args.residual_target:
        if not config.has_head:
            raise UserError("--residual-target is the residual head's target; this model has no head")
        config = config.replace_in("training", residual_from_sampled=args.residual_target == "sampled")
    for name, (section, field) in HEAD_FLAGS.items():
        if getattr(args, name, None):
            if not config.has_head:
                raise UserError(f"--{name.replace('_', '-')} is about the residual head; this model has no head "
                                "(--diff-width / --diff-depth / --diff-mix add one)")
            config = config.replace_in(section, **{field: getattr(args, name)})
    if not config.has_head:
        return config
    return config.replace_in("head", temperature=1.0)  # a measured temperature belongs to the weights it came with


# flags of `hart train` that set the residual head's config: flag name -> (section, field)
HEAD_FLAGS = {"diff_mix": ("head", "mix"), "diff_prediction": ("head", "prediction"), "diff_metric": ("head", "metric"),
              "diff_width": ("head", "width"), "diff_depth": ("head", "depth"),
              "diff_batch_mul": ("training", "diff_batch_mul")}
# the flags that add a head to a model without one (--init of a plain VAR model)
ADDS_A_HEAD = ("diff_mix", "diff_prediction", "diff_metric", "diff_width", "diff_depth")


def flag_values(config: GeneratorConfig) -> dict:
    """The values of :data:`HEAD_FLAGS` in ``config`` (empty without a head)."""
    if not config.has_head:
        return {}
    return {name: getattr(getattr(config, section), field) for name, (section, field) in HEAD_FLAGS.items()}


def fit_preset(name: str, tc, classes, args=None) -> GeneratorConfig:
    """The preset's transformer shape, with the token layout of the tokenizer and the data's
    classes (``classes`` None: captioned data, for a text preset: its encoder and prompt length)."""
    from hart.text import DIMS

    fit = dict(patch_nums=tc.patch_nums, codebook_size=tc.codebook_size, z_channels=tc.z_channels)
    preset = GeneratorConfig.from_name(name)
    if not preset.is_text:
        return preset.replace(**fit, num_classes=len(classes or ()) or 1,
                              display=preset.display.replace(class_names=tuple(classes or ())))
    enc = getattr(args, "text_encoder", None) or preset.text_encoder
    if enc not in DIMS:
        raise UserError(f"unknown text encoder {enc!r}; choose one of: {', '.join(DIMS)}")
    T = getattr(args, "context_tokens", None) or preset.context_tokens
    return preset.replace(**fit, text_encoder=enc, context_dim=DIMS[enc], context_tokens=T)


def copy_tokenizer(src, out: Path) -> None:
    """Copy the tokenizer into ``out/tokenizer`` once; a run never switches tokenizers."""
    dst = out / "tokenizer"
    if dst.exists():
        same = (tokenizer_fingerprint(dst) == tokenizer_fingerprint(src)  # weights, and the config they run with
                and HybridTokenizer.load_config(dst) == HybridTokenizer.load_config(resolve_dir(src)))
        if not same:
            raise UserError(f"{dst} holds another tokenizer than {src}; a run keeps the tokenizer it started with")
        return
    with atomic_dir(dst) as tmp:
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            shutil.copy2(resolve_dir(src) / name, tmp / name)
