import json

import numpy as np
import pytest
import torch

from nas import blocks, cost
from nas.export import compare_with_torch, export_onnx, load_network, onnx_bytes, save_network


def test_every_sampled_arch_builds_with_right_output(cifar_space):
    rng = np.random.default_rng(0)
    f = cifar_space.frame
    for arch in cifar_space.decode_many(cifar_space.sample(rng, 12)):
        net = blocks.build_model(arch).eval()
        with torch.no_grad():
            out = net(torch.randn(2, f.in_chans, f.input_size, f.input_size))
        assert out.shape == (2, f.num_classes)


def test_imagenet_arch_builds(imagenet_space):
    arch = imagenet_space.decode(imagenet_space.sample(np.random.default_rng(3), 1)[0])
    net = blocks.build_model(arch).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize("name", ["cifar_space", "imagenet_space"])
def test_closed_form_costs_match_built_modules(name, request):
    space = request.getfixturevalue(name)
    pop = space.sample(np.random.default_rng(5), 3)
    macs, params = cost.macs(space, pop), cost.params(space, pop)
    shape = (space.frame.in_chans, space.frame.input_size, space.frame.input_size)
    for i, arch in enumerate(space.decode_many(pop)):
        net = blocks.build_model(arch)
        assert macs[i] == blocks.count_macs(net, shape)
        assert params[i] == blocks.count_params(net)


def test_parts_compose_to_the_whole_network(cifar_space):
    """stem + stages + head built separately are the same layers as timm's whole model."""
    arch = cifar_space.decode(cifar_space.sample(np.random.default_rng(2), 1)[0])
    net = blocks.build_model(arch).eval()
    parts = [blocks.build_stem(arch.frame)]
    parts += [blocks.build_stage(blocks.stage_choice_option(arch, s)) for s in range(len(arch.stages))]
    parts += [blocks.build_head(arch.frame, arch.stages[-1].channels)]
    seq = torch.nn.Sequential(*parts).eval()
    assert blocks.count_params(seq) == blocks.count_params(net)
    # copy the whole model's weights into the parts in order; outputs must then agree
    src = [t for _, t in net.state_dict().items()]
    dst = seq.state_dict()
    assert [tuple(t.shape) for t in src] == [tuple(t.shape) for t in dst.values()]
    seq.load_state_dict(dict(zip(dst.keys(), src)))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(seq(x), net(x), rtol=1e-5, atol=1e-5)


def test_stage_option_module_shapes(cifar_space):
    for o in cifar_space.stage_options()[::500]:
        m = blocks.build_stage(o).eval()
        with torch.no_grad():
            y = m(torch.randn(1, o.cin, o.hin, o.hin))
        assert y.shape == (1, o.cout, o.hout, o.hout)


def test_onnx_matches_torch_for_arch_and_stage(cifar_space, tmp_path):
    import onnx

    arch = cifar_space.decode(cifar_space.sample(np.random.default_rng(4), 1)[0])
    net = blocks.build_model(arch)
    path = export_onnx(net, (1, 3, 32, 32), tmp_path / "net.onnx")
    onnx.checker.check_model(onnx.load(str(path)))
    assert compare_with_torch(net, path, (1, 3, 32, 32)) < 1e-4
    o = cifar_space.stage_options()[777]
    stage = blocks.build_stage(o)
    shape = (1, o.cin, o.hin, o.hin)
    assert compare_with_torch(stage, onnx_bytes(stage, shape), shape) < 1e-4


def test_saved_network_loads_with_timm_alone(cifar_space, tmp_path):
    """A found network is its timm arch_def plus weights: rebuild it with nothing but timm."""
    from functools import partial

    from safetensors.torch import load_file
    from timm.layers import get_act_layer
    from timm.models._efficientnet_blocks import SqueezeExcite
    from timm.models._efficientnet_builder import decode_arch_def, round_channels
    from timm.models.mobilenetv3 import MobileNetV3

    arch = cifar_space.decode(cifar_space.sample(np.random.default_rng(9), 1)[0])
    torch.manual_seed(0)
    net = blocks.build_model(arch).eval()
    out = save_network(arch, net, tmp_path / "found")
    recipe = json.loads((out / "arch.json").read_text())["timm"]
    se = partial(SqueezeExcite, gate_layer="hard_sigmoid", force_act_layer=torch.nn.ReLU, rd_round_fn=round_channels)
    plain = MobileNetV3(decode_arch_def(recipe["arch_def"]), num_classes=recipe["num_classes"],
                        stem_size=recipe["stem_size"], fix_stem=True, num_features=recipe["num_features"],
                        act_layer=get_act_layer(recipe["act_layer"]), se_layer=se, round_chs_fn=int)
    plain.load_state_dict(load_file(str(out / "model.safetensors")))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), net(x))
    arch2, net2 = load_network(out)
    assert arch2 == arch
    with torch.no_grad():
        torch.testing.assert_close(net2(x), net(x))
    assert (out / "model.onnx").exists()


def test_costs_vectorised_equal_loop(cifar_space):
    pop = cifar_space.sample(np.random.default_rng(11), 40)
    m = cost.macs(cifar_space, pop)
    loop = [cost.macs(cifar_space, row[None])[0] for row in pop]
    np.testing.assert_array_equal(m, loop)


def test_a_malformed_arch_file_names_itself(tmp_path):
    from nas.errors import UserError
    from nas.export import load_network

    (tmp_path / "arch.json").write_text('{"id": 5}')
    with pytest.raises(UserError, match=r"arch.json: malformed architecture: no 'space'"):
        load_network(tmp_path)
