"""compiler: every toolchain stage on tiny phantoms (CI smoke), pruning and export invariants."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch", reason="the model toolchain needs the `model` extra (torch)")

from appliance.inference.backends import choose_backend  # noqa: E402
from appliance.inference.bundle import load_bundle  # noqa: E402
from compiler.build import SMOKE, build, compare_with_published, reexport  # noqa: E402
from compiler.evaluate import TARGETS, new_misses, target_misses  # noqa: E402
from compiler.labels.table import NUM_CLASSES, VALUE  # noqa: E402
from compiler.model.export import export_onnx  # noqa: E402
from compiler.model.from_onnx import unet_from_onnx  # noqa: E402
from compiler.model.prune import prune_unet  # noqa: E402
from compiler.model.unet import SubpixelUpConv, make_unet, upsample_conv, widen_input  # noqa: E402
from compiler.train import (  # noqa: E402
    LR_SWAP,
    _digest,
    allowed_mask,
    distillation_kl,
    marginal_ce,
    supervised_loss,
)


@pytest.fixture(scope="module")
def smoke_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    return build(root / "bundle", SMOKE, root / "work", threads=1)


def test_smoke_build_runs_every_stage_and_writes_a_verified_bundle(smoke_bundle):
    bundle = load_bundle(smoke_bundle)
    m = bundle.manifest
    assert [s["stage"] for s in m.provenance["training"]["stages"]] == ["teacher", "teacher-airway", "student",
                                                                       "finetune"]
    spec = m.modes["preview"]
    assert spec.fp32 in m.files and spec.int8 in m.files
    assert m.evaluation["cases"], "the held-out evaluation must run"
    row = next(iter(m.evaluation["cases"].values()))
    assert {"teacher", "fp32", "int8", "int8_vs_fp32"} <= set(row)
    assert m.evaluation["targets"]["min_dice"]["body"] == 0.98 and isinstance(m.evaluation["targets"]["misses"], list)
    assert [lab.name for lab in m.labels][:5] == ["body", "bone", "lung_left", "lung_right", "airway"]


def test_teacher_trains_phase_after_phase_each_with_its_own_rate_and_weights_as_the_manifest_records(smoke_bundle):
    stages = load_bundle(smoke_bundle).manifest.provenance["training"]["stages"]
    work = smoke_bundle.parent / "work"
    for phase in SMOKE.teacher_phases:
        row = next(st for st in stages if st["stage"] == phase.stage)
        assert (row["steps"], row["lr"]) == (phase.steps, phase.lr)
        # each phase's own checkpoint, trained with that phase's sampling and loss weights and rate
        config = torch.load(work / f"{phase.stage}.ckpt", weights_only=False)["key"]["config"]
        assert (tuple(config["class_weights"]), tuple(config["loss_weights"]), config["lr"]) == (
            phase.class_weights, phase.loss_weights, phase.lr)
    assert SMOKE.teacher_phases[0].class_weights != SMOKE.teacher_phases[1].class_weights
    # the phases continue one network: the second starts from the weights the first ended with
    first, second = (torch.load(work / f"{ph.stage}.ckpt", weights_only=False) for ph in SMOKE.teacher_phases)
    net = make_unet(SMOKE.teacher_base, SMOKE.depth, NUM_CLASSES, 3)
    net.load_state_dict(first["model"])
    assert second["key"]["start"] == _digest(net)


def test_an_averaged_teacher_is_the_mean_of_its_phase_endpoints_with_batchnorm_measured_again(tmp_path):
    names = tuple(ph.stage for ph in SMOKE.teacher_phases)
    out = build(tmp_path / "bundle", replace(SMOKE, teacher_average=names, bn_batches=3), tmp_path / "work",
                threads=1)
    work = tmp_path / "work"
    ends = [torch.load(work / f"{n}.ckpt", weights_only=False)["model"] for n in names]
    teacher = torch.load(work / "teacher.pt", weights_only=False)
    conv = next(k for k, v in ends[0].items() if v.ndim == 5)
    assert torch.allclose(teacher["state"][conv], (ends[0][conv] + ends[1][conv]) / 2, atol=1e-6)
    var = next(k for k in ends[0] if k.endswith("running_var"))
    assert not torch.allclose(teacher["state"][var], (ends[0][var] + ends[1][var]) / 2)  # measured, not averaged
    row = {"stage": "teacher-average", "averaged": list(names), "bn_batches": 3}
    manifest = load_bundle(out).manifest
    for stages in (manifest.provenance["training"]["stages"], teacher["stages"]):
        assert any(row.items() <= st.items() for st in stages)
    # the last phase's own network is scored beside the average on the same held-out case
    for case in manifest.evaluation["cases"].values():
        assert {"teacher", "teacher_last_phase"} <= set(case) and "dice" in case["teacher_last_phase"]["body"]


def test_contrast_removal_gives_an_enhanced_aorta_blood_hu_and_leaves_bone_and_unenhanced_blood():
    from compiler.train import BLOOD_HU, remove_contrast

    rng = np.random.default_rng(0)
    hu = rng.normal(40.0, 10.0, (8, 16, 16)).astype(np.float32)
    lab = np.full(hu.shape, VALUE["body"], dtype=np.uint8)
    lab[:, 2:6, 2:6] = VALUE["aorta"]
    hu[:, 2:6, 2:6] += 300.0  # enhanced lumen
    lab[:, 10:14, 10:14] = VALUE["bone"]
    hu[:, 10:14, 10:14] = 700.0
    lab[:, 2:6, 10:14] = VALUE["heart"]  # unenhanced: left as it is
    out = remove_contrast(hu, lab, rng)
    aorta = lab == VALUE["aorta"]
    assert abs(float(np.median(out[aorta])) - BLOOD_HU) < 30
    assert np.array_equal(out[~aorta], hu[~aorta])
    assert float(np.median(hu[aorta])) > 300  # the input is not modified


def test_quality_targets_list_each_low_score_int8_drop_and_student_gap_and_nothing_that_meets_them(tmp_path):
    def row(teacher, fp32, int8):
        return {which: {"lung_left": {"dice": d, "hd95_mm": 3.0}} for which, d in
                (("teacher", teacher), ("fp32", fp32), ("int8", int8))}

    cases = {"preview/good": row(0.99, 0.98, 0.975), "preview/low": row(0.97, 0.96, 0.96),
             "preview/int8": row(0.99, 0.99, 0.975), "preview/student": row(0.995, 0.972, 0.971),
             "full/no_lung": {"teacher": {}, "fp32": {}, "int8": {}}}
    misses = target_misses(cases, TARGETS)
    assert [str(m) for m in misses] == [
        "preview/low fp32 lung_left dice 0.9600 < 0.97", "preview/low int8 lung_left dice 0.9600 < 0.97",
        "preview/int8 int8 lung_left dice 0.9750 too far below fp32 0.99",
        "preview/student fp32 lung_left dice 0.9720 too far below the teacher 0.995"]
    # a rebuild is measured against the bundle it replaces: only what that one met counts against it
    shipped = target_misses({"preview/low": row(0.97, 0.965, 0.965)}, TARGETS)
    assert [m.case for m in new_misses(misses, shipped)] == ["preview/int8", "preview/student"]
    assert compare_with_published(tmp_path, {"cases": cases}) == []  # nothing published there yet
    (tmp_path / "manifest.json").write_text(json.dumps({"evaluation": {"cases": {"preview/low": row(0.97, 0.965, 0.965)}}}))
    assert [m.case for m in compare_with_published(tmp_path, {"cases": cases})] == ["preview/int8", "preview/student"]


def test_per_class_weights_name_labels_by_their_value():
    from compiler.train import per_class

    w = per_class(1.0, background=0.0, airway=10.0)
    assert len(w) == NUM_CLASSES and w[0] == 0.0 and w[VALUE["airway"]] == 10.0
    assert sum(w) == NUM_CLASSES - 2 + 10.0


def test_int8_model_is_qdq_with_the_first_conv_left_in_fp32(smoke_bundle):
    m = onnx.load(str(smoke_bundle / "preview.int8.onnx"))
    ops = [n.op_type for n in m.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert "ConvTranspose" not in ops and "BatchNormalization" not in ops
    first_conv = next(n for n in m.graph.node if n.op_type == "Conv")
    producer = {o: n for n in m.graph.node for o in n.output}
    assert producer.get(first_conv.input[0]) is None or producer[first_conv.input[0]].op_type != "DequantizeLinear"
    zero_points = [i for i in m.graph.initializer if i.name.endswith("zero_point")]
    assert zero_points and all(not np.any(onnx.numpy_helper.to_array(z)) for z in zero_points)  # symmetric


def test_pruning_keeps_outputs_when_nothing_is_removed_and_shrinks_channels():
    torch.manual_seed(0)
    model = make_unet(8, 3, 9).eval()
    for layer in model.layers.values():
        layer.bn.weight.data.uniform_(0.0, 1.0)
    x = torch.randn(1, 2, 16, 16, 16)
    same = prune_unet(model, 1.0)
    assert torch.allclose(same(x), model(x), atol=1e-5)
    small = prune_unet(model, 0.5)
    assert all(small.widths[k] <= max(4, model.widths[k] // 2 + 1) for k in model.widths)
    assert sum(p.numel() for p in small.parameters()) < 0.4 * sum(p.numel() for p in model.parameters())


def test_widened_input_computes_what_the_network_did_until_it_learns_the_new_channel():
    torch.manual_seed(2)
    model = make_unet(4, 3, 9).eval()
    wide = widen_input(model, 3)
    x = torch.randn(1, 2, 16, 16, 16)
    extra = torch.rand(1, 1, 16, 16, 16)
    assert wide.in_channels == 3 and wide.config()["in_channels"] == 3
    assert torch.allclose(wide(torch.cat([x, extra], dim=1)), model(x), atol=1e-6)
    with pytest.raises(ValueError, match="narrow"):
        widen_input(wide, 2)


def test_smoke_bundle_declares_the_input_channels_its_network_takes(smoke_bundle):
    m = onnx.load(str(smoke_bundle / "preview.fp32.onnx"))
    n_in = m.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    assert list(load_bundle(smoke_bundle).manifest.normalisation.channels) == ["hu", "x_coordinate", "enclosed_air"]
    assert n_in == 3


def test_subpixel_conv_is_exactly_nearest_upsample_then_conv_at_every_border():
    torch.manual_seed(3)
    conv = torch.nn.Conv3d(5, 7, 3, padding=1, bias=True)
    x = torch.randn(2, 5, 3, 4, 5)  # odd and even sizes: every parity meets a border
    want = torch.relu(conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")))
    got = SubpixelUpConv(conv)(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="3x3x3"):
        SubpixelUpConv(torch.nn.Conv3d(5, 7, 3, stride=2, padding=1))


def test_training_up_conv_computes_and_learns_exactly_what_upsample_then_conv_does():
    torch.manual_seed(4)
    x = torch.randn(2, 5, 3, 4, 5, requires_grad=True)  # odd and even sizes: every parity meets a border
    weight = torch.randn(7, 5, 3, 3, 3, requires_grad=True)
    bias = torch.randn(7, requires_grad=True)
    want = torch.nn.functional.conv3d(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"),
                                      weight, bias, padding=1)
    got = upsample_conv(x, weight, bias)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-4)
    g = torch.randn_like(want)
    grads_want = torch.autograd.grad(want, (x, weight, bias), g)
    grads_got = torch.autograd.grad(got, (x, weight, bias), g)
    for a, b in zip(grads_got, grads_want, strict=True):
        assert torch.allclose(a, b, atol=1e-3)


def test_exported_onnx_matches_torch_with_batchnorm_folded_and_no_resize(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(1)
    model = make_unet(4, 3, 9)
    model.train()
    model(torch.randn(2, 2, 16, 16, 16))  # non-trivial BN statistics
    model.eval()
    path = export_onnx(model, tmp_path / "m.onnx", (16, 16, 16))
    assert "Resize" not in {n.op_type for n in onnx.load(str(path)).graph.node}
    x = torch.randn(1, 2, 16, 16, 16)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    assert np.abs(out - model(x).detach().numpy()).max() < 1e-3


def test_reexport_republishes_the_trained_networks_with_their_training_record(smoke_bundle, tmp_path):
    import shutil

    bundle = shutil.copytree(smoke_bundle, tmp_path / "bundle")
    before = load_bundle(bundle).manifest
    reexport(bundle, SMOKE, smoke_bundle.parent / "work", threads=1)
    after = load_bundle(bundle).manifest  # hashes verified
    assert after.provenance["training"] == before.provenance["training"]
    assert "reexported" in after.provenance and after.evaluation["cases"]
    assert after.modes["preview"].fp32 in after.files


def test_a_teacher_recovered_from_its_exported_file_computes_what_the_checkpoint_did(smoke_bundle):
    work = smoke_bundle.parent / "work"
    ck = torch.load(work / "teacher.pt")
    trained = make_unet(4, 2, NUM_CLASSES, ck["config"]["in_channels"])
    trained.load_state_dict(ck["state"])
    trained.eval()
    torch.manual_seed(5)
    patches = [torch.randn(1, trained.in_channels, 16, 16, 16).numpy() for _ in range(2)]
    recovered = unet_from_onnx(work / "teacher.preview.onnx", patches)
    assert recovered.widths == trained.widths
    x = torch.randn(1, trained.in_channels, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(recovered(x), trained(x), atol=1e-4)
    # BN scales are again each channel's spread, which pruning ranks by: a constant channel would rank last
    assert all(float(layer.bn.weight.min()) > 0 for layer in recovered.layers.values())


def test_a_build_can_distil_a_new_student_from_the_teacher_a_bundle_ships(smoke_bundle, tmp_path, caplog):
    teacher_file = smoke_bundle.parent / "work" / "teacher.preview.onnx"
    caplog.set_level(logging.INFO, logger="compiler.build")
    out = build(tmp_path / "bundle", SMOKE, tmp_path / "work", threads=1, teacher_from=teacher_file,
                compare_with=smoke_bundle)
    # a candidate built beside the shipped bundle is still judged against it
    assert f"event=compared_with_replaced_bundle path={smoke_bundle} " in caplog.text
    stages = load_bundle(out).manifest.provenance["training"]["stages"]
    assert {"stage": "teacher", "steps": 0, "reused": "teacher.preview.onnx"} in stages
    assert [st["stage"] for st in stages if st["steps"]][-2:] == ["student", "finetune"]


def test_training_killed_midway_resumes_from_its_checkpoint_and_ends_where_an_unbroken_run_does(tmp_path):
    from compiler.build import _phantom_volume
    from compiler.train import PatchStream, TrainConfig, train

    vols = [_phantom_volume(7, (24, 32, 32), (4.0, 4.0, 4.0))]
    cfg = TrainConfig(patch=(16, 16, 16), batch=1, steps=5, log_every=1)

    def fresh():
        torch.manual_seed(0)
        return make_unet(4, 2, NUM_CLASSES, 3)

    unbroken = fresh()
    train(unbroken, PatchStream(vols, cfg), cfg)

    class KilledError(Exception):
        pass

    class DiesOnFourthBatch(PatchStream):
        calls = 0

        def next(self):
            self.calls += 1
            if self.calls == 4:
                raise KilledError
            return super().next()

    ck = tmp_path / "stage.ckpt"
    with pytest.raises(KilledError):
        train(fresh(), DiesOnFourthBatch(vols, cfg), cfg, checkpoint=ck, checkpoint_every=2)
    assert torch.load(ck, weights_only=False)["step"] == 2
    resumed = fresh()
    stats = train(resumed, PatchStream(vols, cfg), cfg, checkpoint=ck, checkpoint_every=2)
    assert stats["steps"] == 5 and torch.load(ck, weights_only=False)["step"] == 5
    for a, b in zip(resumed.state_dict().values(), unbroken.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    other = replace(cfg, lr=1e-4)  # another config never takes this checkpoint
    changed = fresh()
    train(changed, PatchStream(vols, other), other, checkpoint=ck)
    assert not torch.allclose(changed.head.weight, resumed.head.weight)
    ck.write_bytes(ck.read_bytes()[:100])  # a damaged checkpoint: the stage starts over
    again = fresh()
    assert train(again, PatchStream(vols, cfg), cfg, checkpoint=ck)["steps"] == 5
    assert torch.allclose(again.head.weight, unbroken.head.weight, atol=1e-6)


def test_partial_label_loss_ignores_unknown_classes_and_unlabelled_voxels():
    lab = torch.tensor([[1, 1, 0, 3]])
    known_all = (1 << 9) - 1
    # heart unknown / nothing known / all known / heart unknown in a lung voxel
    known = torch.tensor([[known_all & ~(1 << 6), 0, known_all, known_all & ~(1 << 6)]])
    allowed = allowed_mask(lab, known)
    assert allowed[0, :, 0].tolist() == [c in (1, 6) for c in range(9)]
    assert allowed[0, :, 1].all()
    assert allowed[0, :, 2].tolist() == [c == 0 for c in range(9)]
    assert allowed[0, :, 3].tolist() == [c == 3 for c in range(9)]  # a lung voxel cannot hide a heart
    heart = torch.full((1, 9, 4), -5.0)
    heart[0, 6, :2] = 5.0
    heart[0, 0, 2] = 5.0
    heart[0, 3, 3] = 5.0  # voxel 2 correct (background); voxel 0 says heart, allowed; voxel 1 ignored
    assert float(marginal_ce(torch.log_softmax(heart, 1), allowed)) < 0.01
    heart[0, 6, 0], heart[0, 0, 0] = -5.0, 5.0  # voxel 0 now says background: not what "body or heart" allows
    assert float(marginal_ce(torch.log_softmax(heart, 1), allowed)) > 1.0


def test_supervised_loss_is_near_zero_for_the_labels_and_large_for_a_swapped_lung():
    lab = torch.zeros((1, 4, 4, 4), dtype=torch.uint8)
    lab[0, :, :2] = VALUE["lung_left"]
    lab[0, :, 2:] = VALUE["lung_right"]
    known = torch.full(lab.shape, (1 << 9) - 1, dtype=torch.int32)
    weight = torch.ones(lab.shape)
    right = torch.nn.functional.one_hot(lab.long(), 9).permute(0, 4, 1, 2, 3).float() * 20.0
    swapped = torch.nn.functional.one_hot(torch.from_numpy(LR_SWAP)[lab.long()].long(), 9).permute(0, 4, 1, 2, 3)
    assert float(supervised_loss(right, lab, known, weight, 0.1)) < 0.01
    assert float(supervised_loss(swapped.float() * 20.0, lab, known, weight, 0.1)) > 1.0


def test_loss_weight_counts_a_voxel_as_many_times_as_it_says():
    lab = torch.tensor([[0, 5]])
    allowed = allowed_mask(lab, torch.full((1, 2), (1 << 9) - 1))
    logits = torch.randn(1, 9, 2)
    doubled = torch.cat([logits, logits[:, :, 1:]], dim=2)  # the airway voxel twice
    allowed_doubled = torch.cat([allowed, allowed[:, :, 1:]], dim=2)
    weighted = marginal_ce(torch.log_softmax(logits, 1), allowed, torch.tensor([[1.0, 2.0]]))
    assert torch.allclose(weighted, marginal_ce(torch.log_softmax(doubled, 1), allowed_doubled))


def test_distillation_weight_counts_a_voxel_as_many_times_as_it_says():
    student, teacher = torch.randn(2, 9, 1, 1, 2), torch.randn(2, 9, 1, 1, 2)
    twice = [torch.cat([t, t[..., 1:]], dim=-1) for t in (student, teacher)]  # the airway voxels twice
    weighted = distillation_kl(student, teacher, 2.0, torch.tensor([1.0, 2.0]).expand(2, 1, 1, 2))
    assert torch.allclose(weighted, distillation_kl(*twice, 2.0))
    assert float(distillation_kl(teacher, teacher, 2.0)) < 1e-6
    assert float(distillation_kl(student, teacher, 2.0)) > 0.0


def test_auto_precision_times_the_checked_onnx_runtime_files_runs_the_faster_and_caches_it(smoke_bundle, tmp_path):
    import shutil

    from appliance.inference.accuracy import CHECK_FILE

    root = tmp_path / "bundle"
    shutil.copytree(smoke_bundle, root)
    bundle = load_bundle(root)
    spec = bundle.mode("preview")
    unchecked = choose_backend(bundle, spec, preference="ort-cpu", threads=1, precision_cache=tmp_path)
    assert (unchecked.backend.name, unchecked.precision.source) == ("ort-cpu-fp32", "only candidate")
    assert "not checked" in unchecked.precision.ineligible["ort-cpu-int8"]
    (root / CHECK_FILE).write_text(json.dumps({"modes": {"preview": {"ort-cpu-int8": {
        "model_sha256": bundle.manifest.files[spec.int8], "min_dice": 0.995}}}}))
    first = choose_backend(bundle, spec, preference="ort-cpu", threads=1, precision_cache=tmp_path)
    how = first.precision
    assert how.source == "measured" and set(how.ms_per_patch) == {"ort-cpu-int8", "ort-cpu-fp32"}
    assert min(how.ms_per_patch.values()) > 0
    assert how.candidate.key == min(how.ms_per_patch, key=how.ms_per_patch.get)
    assert first.backend.name == how.candidate.key
    x = np.zeros((1, len(bundle.manifest.normalisation.channels), *spec.patch), dtype=np.float32)
    assert first.backend.run(x).shape[1] == NUM_CLASSES
    again = choose_backend(bundle, spec, preference="ort-cpu", threads=1, precision_cache=tmp_path)
    assert (again.precision.source, again.precision.precision) == ("cached", how.precision)


def test_manifest_lists_training_data_with_licences(smoke_bundle):
    raw = json.loads((smoke_bundle / "manifest.json").read_text())
    assert any(t["use"] == "synthetic" for t in raw["training_data"])
    assert all(t["licence"] for t in raw["training_data"])


def test_patch_sampling_centres_small_classes_as_often_as_their_weight_says():
    from appliance.inference.grid import grid_of
    from compiler.data import ALL_KNOWN, LabelledVolume
    from compiler.train import sample_patch

    labels = np.ones((32, 32, 32), dtype=np.uint8)
    labels[:, 14:18, 14:18] = 5  # a thin airway-like tube
    vol = LabelledVolume("tube", np.zeros(labels.shape, np.float32), labels,
                         np.full(labels.shape, ALL_KNOWN, np.uint16), grid_of(labels, np.eye(4)))
    rng = np.random.default_rng(0)
    weights = (0.0, 1.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0)
    centred = [sample_patch(vol, (4, 4, 4), rng, 1.0, weights)[1] for _ in range(400)]
    share = np.mean([(lab == 5).any() for lab in centred])
    assert 0.65 < share < 0.9  # 3:1 for the tube (the random shift makes a few patches miss it)


def test_build_refuses_to_average_a_teacher_phase_the_recipe_does_not_have(capsys):
    from compiler.build import main

    with pytest.raises(SystemExit):
        main(["--smoke", "--teacher-average", "teacher,no-such-phase"])
    assert "no teacher phase named ['no-such-phase']" in capsys.readouterr().err


def test_training_logs_how_long_the_rest_of_its_stage_will_take(caplog):
    import re

    from compiler.build import _phantom_volume
    from compiler.train import PatchStream, TrainConfig, train

    vols = [_phantom_volume(7, (24, 32, 32), (4.0, 4.0, 4.0))]
    cfg = TrainConfig(patch=(16, 16, 16), batch=1, steps=3, log_every=1)
    caplog.set_level(logging.INFO, logger="compiler.train")
    train(make_unet(4, 2, NUM_CLASSES, 3), PatchStream(vols, cfg), cfg, stage="eta")
    etas = [int(m) for m in re.findall(r"event=train stage=eta step=\d+ .* stage_eta_s=(\d+)", caplog.text)]
    assert len(etas) == 3 and etas[-1] == 0
