import json

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from nas.errors import UserError
from nas.space import Arch, SearchSpace

SPACES = ["mobilenetv3_cifar", "mobilenetv3_imagenet"]


@pytest.fixture(scope="module", params=SPACES)
def space(request):
    return SearchSpace.load(request.param)


def test_shipped_spaces_have_expected_shape(cifar_space, imagenet_space):
    assert imagenet_space.frame.input_size == 224 and imagenet_space.frame.num_classes == 1000
    assert [st.base_width for st in imagenet_space.stages] == [24, 40, 80, 112, 160]
    assert imagenet_space.placements == ((2, 2, 2, 1, 2),)
    assert imagenet_space.D == 30 and imagenet_space.cardinality == 324 ** 5
    assert cifar_space.frame.input_size == 32 and cifar_space.frame.num_classes == 10
    for stage in cifar_space.stages + imagenet_space.stages:  # width choices never collapse
        assert len(set(stage.channels)) == len(stage.channels)
        assert all(c % 4 == 0 for c in stage.channels)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 20))
def test_sample_encode_decode_roundtrip(space, seed, n):
    pop = space.sample(np.random.default_rng(seed), n)
    assert pop.shape == (n, space.D) and pop.dtype == np.int64
    assert (pop >= 0).all() and (pop < space.n_choices).all()
    archs = space.decode_many(pop)
    np.testing.assert_array_equal(space.encode_many(archs), pop)
    for a in archs:
        assert space.parse_id(a.id) == a
        again = Arch.from_json(json.loads(json.dumps(a.to_json())))
        assert again == a and again.id == a.id


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), p=st.floats(0.0, 1.0))
def test_mutate_and_crossover_stay_valid(space, seed, p):
    rng = np.random.default_rng(seed)
    a, b = space.sample(rng, 8), space.sample(rng, 8)
    m = space.mutate(rng, a, p)
    assert m.shape == a.shape and (m >= 0).all() and (m < space.n_choices).all()
    if p == 0.0:
        np.testing.assert_array_equal(m, a)
    c = space.crossover(rng, a, b)
    assert ((c == a) | (c == b)).all()
    # crossover swaps whole stages: each stage's six columns come from one parent
    for s in range(len(space.stages)):
        blk = slice(6 * s, 6 * s + 6)
        from_a = (c[:, blk] == a[:, blk]).all(axis=1)
        from_b = (c[:, blk] == b[:, blk]).all(axis=1)
        assert (from_a | from_b).all()


def test_mutation_changes_every_gene_when_p_is_one(cifar_space):
    rng = np.random.default_rng(0)
    a = cifar_space.sample(rng, 50)
    m = cifar_space.mutate(rng, a, 1.0)
    assert (m != a).all()


def test_step_mutation_moves_to_a_neighbouring_choice(cifar_space):
    rng = np.random.default_rng(0)
    a = cifar_space.sample(rng, 200)
    m = cifar_space.mutate(rng, a, 1.0, step_prob=1.0)
    assert (np.abs(m - a) == 1).all() and (m >= 0).all() and (m < cifar_space.n_choices).all()


def test_evolution_seeds_the_extremes_and_keeps_an_elite_front(cifar_space):
    from nas.objectives import parse_objectives
    from nas.search.evolution import Evolution

    ctl = Evolution(cifar_space, parse_objectives("accuracy,macs"), seed=0, population=8)
    first = ctl.ask(8)
    np.testing.assert_array_equal(first[0], 0)
    np.testing.assert_array_equal(first[1], cifar_space.n_choices - 1)
    F = np.random.default_rng(1).random((8, 2))
    ctl.tell(first, F, np.zeros(8))
    from nas.pareto import non_dominated_mask
    assert len(ctl.elite_X) == non_dominated_mask(F).sum()
    again = Evolution(cifar_space, parse_objectives("accuracy,macs"), seed=0, population=8)
    again.load_state_dict(json.loads(json.dumps(ctl.state_dict())))
    np.testing.assert_array_equal(again.ask(8), ctl.ask(8))


def test_same_seed_same_sample(cifar_space):
    a = cifar_space.sample(np.random.default_rng(7), 10)
    b = cifar_space.sample(np.random.default_rng(7), 10)
    np.testing.assert_array_equal(a, b)


def test_stage_options_cover_every_arch(cifar_space):
    options = set(cifar_space.stage_options())
    from nas.blocks import stage_choice_option

    for arch in cifar_space.decode_many(cifar_space.sample(np.random.default_rng(1), 50)):
        for s in range(len(arch.stages)):
            assert stage_choice_option(arch, s) in options
    # stage 1 has one input; the others receive each width of the stage before
    assert len(options) == 324 + 4 * 3 * 324


def test_arch_def_is_timm_syntax(cifar_space):
    arch = cifar_space.decode(np.zeros(cifar_space.D, dtype=int))
    d = arch.to_arch_def()
    assert d[0] == ["ds_r1_k3_s1_e1_c16_nre"] and d[-1] == ["cn_r1_k1_s1_c128"]
    assert d[1] == ["ir_r1_k3_s1_e3_c12_nre"]


def test_stride_placement_space(tmp_path):
    cfg = yaml.safe_load(open(SearchSpace.load("mobilenetv3_cifar").source))
    for st_ in cfg["stages"]:
        st_["stride"] = [1, 2]
    cfg["downsampling"] = {"total": 16}
    space = SearchSpace.from_dict(cfg, "placed.yaml")
    assert space.searches_strides and space.decision_names[-1] == "strides"
    assert len(space.placements) == 10  # choose 3 of 5 stages to downsample
    assert all(np.prod(p) * 2 == 16 for p in space.placements)
    pop = space.sample(np.random.default_rng(0), 30)
    archs = space.decode_many(pop)
    np.testing.assert_array_equal(space.encode_many(archs), pop)
    assert all("@" in a.id and space.parse_id(a.id) == a for a in archs)
    ctx, opt, _ = space.grid_index(pop)
    assert (ctx < np.array([space.n_contexts(s) for s in range(5)])).all()


BAD = [
    ({"stages": []}, "stages must be a non-empty list"),
    ({"colour": "red"}, "unknown key colour"),
    ({"defaults": {"depth": []}}, "empty choice list"),
    ({"defaults": {"kernel": [4]}}, "not a valid kernel"),
    ({"defaults": {"act": ["gelu"]}}, "unknown activation"),
    ({"stages": [{"base_width": 16, "stride": 3}]}, "stride 3 is not 1 or 2"),
    ({"stages": [{"base_width": 16, "stride": [1, 2]}]}, "downsampling.total is missing"),
    ({"stages": [{"base_width": 16, "stride": [1, 2]}], "downsampling": {"total": 64}}, "cannot be reached"),
    ({"stem": {"channels": 16, "stride": 1}}, "stem.stride must be 2"),
    ({"stages": [{"base_width": 16, "stride": 1, "depht": [1]}]}, "unknown key stages[0].depht"),
]


@pytest.mark.parametrize("patch,message", BAD)
def test_bad_space_files_fail_clearly(tmp_path, patch, message):
    cfg = yaml.safe_load(open(SearchSpace.load("mobilenetv3_cifar").source))
    for key, value in patch.items():
        if key in ("defaults", "stem"):
            cfg[key].update(value)
        else:
            cfg[key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError) as e:
        SearchSpace.load(path)
    assert message in str(e.value) and "bad.yaml" in str(e.value)
    assert "\n" not in e.value.one_line()


def test_malformed_yaml_and_missing_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="malformed YAML"):
        SearchSpace.load(path)
    with pytest.raises(UserError, match="no such search space"):
        SearchSpace.load("no_such_space")


def test_encode_rejects_foreign_arch(cifar_space, imagenet_space):
    arch = imagenet_space.decode(np.zeros(imagenet_space.D, dtype=int))
    with pytest.raises(UserError, match="made for space"):
        cifar_space.encode(arch)
    with pytest.raises(UserError, match="out of range"):
        cifar_space.check_pop(np.full((1, cifar_space.D), 9))
