"""sam3's scripted box-loss helper gives the same gradient on every call once
``build_lora_sam3`` has run, so a resumed run (a new process, whose first calls would
otherwise take TorchScript's unoptimized path) matches an uninterrupted one.

Each check runs in a fresh interpreter: TorchScript keeps a function's optimized plan for
the rest of the process, and the executor switch is per thread."""

import subprocess
import sys
import textwrap

#: Calls sam3's ``fast_diag_generalized_box_iou`` (used by its GIoU box loss) four times
#: on the same boxes and prints whether the 4th call's gradient equals the 1st's, bit for
#: bit. TorchScript's profiling executor optimizes the function after its first calls.
_PROBE = textwrap.dedent("""
    import sys, torch
    from sam3.model.box_ops import fast_diag_generalized_box_iou
    if sys.argv[1] == "builder":
        from sam3_lora_plugin.models.arch import build_sam3_arch
        from sam3_lora_plugin.trainer.wrapper import build_lora_sam3
        build_lora_sam3(build_sam3_arch("tiny"), {"rank": 2})
    print("optimize", torch._C._get_graph_executor_optimize())
    g = torch.Generator().manual_seed(0)
    xy, wh = torch.rand(64, 2, generator=g), torch.rand(64, 2, generator=g)
    b1 = torch.cat([xy, xy + wh], 1).requires_grad_()
    b2 = torch.cat([xy + 0.1, xy + 0.7 * wh + 0.2], 1)
    grads = []
    for _ in range(4):
        b1.grad = None
        (1 - fast_diag_generalized_box_iou(b1, b2)).sum().backward()
        grads.append(b1.grad.clone())
    print("same", torch.equal(grads[0], grads[3]), (grads[0] - grads[3]).abs().max().item())
""")


def _probe(mode: str) -> str:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_after_the_builder_every_call_of_a_scripted_loss_helper_has_the_same_gradient():
    out = _probe("builder")
    assert "optimize False" in out and "same True 0.0" in out, out


def test_without_the_builder_torchscript_changes_the_gradient_after_its_first_calls():
    """Why ``keep_torchscript_unoptimized`` exists. If a torch release stops doing this,
    this test fails, and the switch (``sam3_lora_plugin/trainer/jit_executor.py``) can go."""
    out = _probe("plain")
    assert "optimize True" in out and "same False" in out, out
