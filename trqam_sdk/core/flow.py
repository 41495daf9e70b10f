"""Flow-time math: the memoryless schedule, stateless SDE/ODE steps, rollouts and the lean adjoint.

Convention (SPEC §1): t = 0 is noise, t = 1 is the action; grid t_i = i h, h = 1/T, i = 0..T-1.
Everything here is a pure function of tensors and velocity callables ``v(x, t) -> velocity`` (the
conditioning is closed over by the caller), so it can be unit-tested without any model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""``v(x, t)``: x of shape (B, D), t of shape (B,) -> velocity (B, D), in the SDK time convention."""


def time_grid(num_steps: int, device: torch.device | None = None) -> Tensor:
    """The Euler grid t_i = i / T for i = 0..T-1."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return torch.arange(num_steps, device=device, dtype=torch.float32) / num_steps


def memoryless_g(t: Tensor | float, h: float) -> Tensor | float:
    """Memoryless diffusion g(t) = sqrt(2 (1 - t + h) / (t + h)); the +h offset avoids t = 0 (SPEC §3.1)."""
    if isinstance(t, Tensor):
        return torch.sqrt(2.0 * (1.0 - t + h) / (t + h))
    return math.sqrt(2.0 * (1.0 - t + h) / (t + h))


def sde_step(x: Tensor, v: Tensor, t: float, h: float, noise: Tensor) -> Tensor:
    """One memoryless Euler–Maruyama step: x + h (2 v - x / (t + h)) + sqrt(h) g(t) z."""
    g = memoryless_g(t, h)
    return x + h * (2.0 * v - x / (t + h)) + math.sqrt(h) * g * noise


def ode_step(x: Tensor, v: Tensor, h: float) -> Tensor:
    """One plain Euler step of dx = v dt."""
    return x + h * v


def _tvec(x: Tensor, t: float) -> Tensor:
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


@torch.no_grad()
def sample_ode(v: VelocityFn, x0: Tensor, num_steps: int) -> Tensor:
    """Deterministic Euler ODE sample from noise x0 at t = 0 to the action at t = 1."""
    h = 1.0 / num_steps
    x = x0
    for i in range(num_steps):
        x = ode_step(x, v(x, _tvec(x, i * h)), h)
    return x


@torch.no_grad()
def sample_memoryless(v_ctrl: VelocityFn, v_last: VelocityFn, x0: Tensor, noise: Tensor) -> Tensor:
    """Controlled memoryless SDE rollout (SPEC §3.1); returns the whole trajectory (T+1, B, D).

    Steps 0..T-2 are stochastic with the controlled velocity ``v_ctrl``; the last step is a deterministic
    Euler step with ``v_last`` (the reference velocity), exactly as the authors' implementation.
    ``noise`` has shape (T-1, B, D). No gradient flows through the trajectory.
    """
    num_steps = noise.shape[0] + 1
    h = 1.0 / num_steps
    xs = [x0]
    x = x0
    for i in range(num_steps - 1):
        t = i * h
        x = sde_step(x, v_ctrl(x, _tvec(x, t)), t, h, noise[i])
        xs.append(x)
    t = (num_steps - 1) * h
    xs.append(ode_step(x, v_last(x, _tvec(x, t)), h))
    return torch.stack(xs)


def sample_memoryless_tracked(v_ctrl: VelocityFn, v_last: VelocityFn, x0: Tensor,
                              noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`sample_memoryless`, also returning the controlled velocities it evaluated, with their graph.

    Returns ``(xs, v, v_last)``: the trajectory (T+1, B, D) (no gradient flows through it: each step uses
    the *detached* velocity), ``v_ctrl(x_i, t_i)`` for i = 0..T-1 (T, B, D) with autograd history (the
    T-th is evaluated at x_{T-1} but not stepped with), and the reference velocity of the last step (B, D).
    The loss reuses these instead of re-evaluating v_θ on the trajectory: same values, T-1 fewer passes.
    """
    num_steps = noise.shape[0] + 1
    h = 1.0 / num_steps
    xs, vs = [x0], []
    x = x0.detach()
    for i in range(num_steps):
        t = i * h
        v = v_ctrl(x, _tvec(x, t))
        vs.append(v)
        if i < num_steps - 1:
            with torch.no_grad():
                x = sde_step(x, v.detach(), t, h, noise[i])
            xs.append(x)
    with torch.no_grad():
        v_l = v_last(x, _tvec(x, (num_steps - 1) * h))
        xs.append(ode_step(x, v_l, h))
    return torch.stack(xs), torch.stack(vs), v_l


def velocity_vjp(v: VelocityFn, x: Tensor, t: Tensor, cotangent: Tensor) -> Tensor:
    """Vector-Jacobian product cotangentᵀ ∂v/∂x at (x, t); no parameter gradients are formed."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(v(x, t), x, grad_outputs=cotangent)
    return grad


def lean_adjoint(v_base: VelocityFn, xs: Tensor, a_terminal: Tensor) -> Tensor:
    """Lean adjoint by one VJP per step through the base drift 2 v_base - x / t (SPEC §3.3).

    a_i = a_{i+1} + h VJP_x[2 v_base(x, t_i + h) - x / (t_i + h)](x_i; a_{i+1}), for i = T-1..0.
    ``xs`` holds x_0..x_{T-1} (T, B, D) (the terminal state is not needed); returns a_0..a_{T-1}.
    """
    num_steps = xs.shape[0]
    h = 1.0 / num_steps
    a = a_terminal.detach()
    out = [a] * num_steps
    for i in range(num_steps - 1, -1, -1):
        s = i * h + h
        jv = velocity_vjp(v_base, xs[i], _tvec(a, s), a)
        a = a + h * (2.0 * jv - a / s)
        out[i] = a
    return torch.stack(out).detach()
