"""build_info() reports what the extension was built with."""

import torch

import eplb_rt


def test_build_info_reports_backends_and_versions():
    info = eplb_rt.build_info()
    assert info["version"] == eplb_rt.__version__
    assert info["torch_version"] == torch.__version__
    assert info["backends"]["cpu"] is True
    assert isinstance(info["backends"]["cuda"], bool)
    assert isinstance(info["backends"]["npu"], bool)
    assert info["build_type"]
    assert info["compiler"]
    assert isinstance(info["cxx_flags"], str)


def test_ops_are_registered():
    import eplb_rt.ops  # noqa: F401  (loads the library)

    for name in (
        "route_and_count",
        "count_from_group_list",
        "update_expert_weights_",
        "update_expert_map_",
    ):
        assert hasattr(torch.ops.eplb_rt, name)
