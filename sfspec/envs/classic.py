"""Gymnasium 1.4's classic-control environments as batched torch simulators.

Each class reproduces ``gymnasium/envs/classic_control/<name>.py``: same spaces, constants,
reward, termination, integration scheme and reset distribution. Expressions keep gymnasium's
operation order (and its float32 roundings), so a float64 env follows gymnasium's arithmetic up to
the odd last-bit difference between torch's and the C library's sin, cos and pow.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from gymnasium import spaces

from sfspec.envs.base import TensorEnv
from sfspec.envs.catalogue import PARAMETERS


def _f32(value: float) -> float:
    """``value`` rounded to the nearest float32, as numpy does when it meets a float32 operand."""
    return float(np.float32(value))


class CartPoleEnv(TensorEnv):
    """CartPole-v1: balance a pole on a cart; Discrete(2) pushes left/right, +1 per step."""

    env_id = "sfspec/CartPole-v1"
    gym_id = "CartPole-v1"
    state_dim = 4  # x, x_dot, theta, theta_dot
    default_max_episode_steps = 500

    parameters = PARAMETERS[env_id]  # gravity, cart_mass, pole_mass, pole_half_length, force
    tau = 0.02  # seconds between state updates
    kinematics_integrator = "euler"
    theta_threshold_radians = 12 * 2 * math.pi / 360
    x_threshold = 2.4

    def __init__(
        self,
        num_envs: int,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
        max_episode_steps: int | None = None,
        sutton_barto_reward: bool = False,
    ) -> None:
        self.sutton_barto_reward = sutton_barto_reward
        high = np.array(
            [self.x_threshold * 2, np.inf, self.theta_threshold_radians * 2, np.inf],
            dtype=np.float32,
        )
        self.single_action_space = spaces.Discrete(2)
        self.single_observation_space = spaces.Box(-high, high, dtype=np.float32)
        super().__init__(num_envs, device, dtype, seed, max_episode_steps)

    def _initial_state(self) -> torch.Tensor:
        return self._uniform(-0.05, 0.05, 4)

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        return state.clone()

    def _dynamics(self, state: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p, c = self.params, self._coef
        # gymnasium's derived constants, per row, combined in float64 like its Python floats.
        masspole, total_mass = p["pole_mass"], p["pole_mass"] + p["cart_mass"]
        length, polemass_length = p["pole_half_length"], p["pole_mass"] * p["pole_half_length"]
        x, x_dot, theta, theta_dot = state.unbind(-1)
        force_mag = c(p["force"])
        force = torch.where(actions == 1, force_mag, -force_mag)  # 0 pushes left, 1 pushes right
        costheta = torch.cos(theta)
        sintheta = torch.sin(theta)
        temp = (force + c(polemass_length) * theta_dot.square() * sintheta) / c(total_mass)
        thetaacc = (c(p["gravity"]) * sintheta - costheta * temp) / (
            c(length) * (4.0 / 3.0 - c(masspole) * costheta.square() / c(total_mass))
        )
        xacc = temp - c(polemass_length) * thetaacc * costheta / c(total_mass)
        if self.kinematics_integrator == "euler":
            x = x + self.tau * x_dot
            x_dot = x_dot + self.tau * xacc
            theta = theta + self.tau * theta_dot
            theta_dot = theta_dot + self.tau * thetaacc
        else:  # semi-implicit euler
            x_dot = x_dot + self.tau * xacc
            x = x + self.tau * x_dot
            theta_dot = theta_dot + self.tau * thetaacc
            theta = theta + self.tau * theta_dot
        # abs() is exact, so this equals gymnasium's four one-sided comparisons.
        terminated = (x.abs() > self.x_threshold) | (theta.abs() > self.theta_threshold_radians)
        if self.sutton_barto_reward:
            reward = -terminated.to(self.dtype)  # 0 per step, -1 on the terminating step
        else:
            reward = torch.ones_like(x)  # +1 per step, including the terminating one
        return torch.stack((x, x_dot, theta, theta_dot), dim=-1), reward, terminated


class PendulumEnv(TensorEnv):
    """Pendulum-v1: swing up a pendulum with a torque in [-2, 2]; never terminates."""

    env_id = "sfspec/Pendulum-v1"
    gym_id = "Pendulum-v1"
    state_dim = 2  # theta (not normalised), theta_dot
    default_max_episode_steps = 200

    parameters = PARAMETERS[env_id]  # gravity (gymnasium's `g`), mass (`m`), length (`l`)
    max_speed = 8
    max_torque = 2.0
    dt = 0.05

    def __init__(
        self,
        num_envs: int,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
        max_episode_steps: int | None = None,
        g: float | None = None,
    ) -> None:
        high = np.array([1.0, 1.0, self.max_speed], dtype=np.float32)
        self.single_action_space = spaces.Box(
            low=-self.max_torque,
            high=self.max_torque,
            shape=(1,),
            dtype=np.float32,
        )
        self.single_observation_space = spaces.Box(low=-high, high=high, dtype=np.float32)
        super().__init__(num_envs, device, dtype, seed, max_episode_steps)
        if g is not None:  # gymnasium's keyword: this env's own nominal gravity
            self.set_parameters({"gravity": g})

    def _initial_state(self) -> torch.Tensor:
        # theta ~ U(-pi, pi), theta_dot ~ U(-1, 1): gymnasium's DEFAULT_X / DEFAULT_Y.
        state = self._uniform(-1.0, 1.0, 2)
        state[:, 0] *= math.pi
        return state

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        theta, thetadot = state.unbind(-1)
        return torch.stack((torch.cos(theta), torch.sin(theta), thetadot), dim=-1)

    def _dynamics(self, state: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        th, thdot = state.unbind(-1)
        p, c, dt = self.params, self._coef, self.dt
        g, m, length = p["gravity"], p["mass"], p["length"]
        u = actions[:, 0].clamp(-self.max_torque, self.max_torque)
        costs = _angle_normalize(th).square() + 0.1 * thdot.square() + 0.001 * u.square()
        # numpy multiplies the float32 action by a Python float in float32 (NEP 50); rounding the
        # product likewise keeps a float64 env on gymnasium's trajectory near the unstable top.
        torque_term = self._round_f32(c(3.0 / (m * length**2)) * u)
        newthdot = thdot + (c(3 * g / (2 * length)) * torch.sin(th) + torque_term) * dt
        newthdot = newthdot.clamp(-self.max_speed, self.max_speed)
        newth = th + newthdot * dt
        terminated = torch.zeros_like(th, dtype=torch.bool)
        return torch.stack((newth, newthdot), dim=-1), -costs, terminated


def _angle_normalize(x: torch.Tensor) -> torch.Tensor:
    """Map an angle to [-pi, pi), like gymnasium's ``angle_normalize`` (Python-style modulo)."""
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


class AcrobotEnv(TensorEnv):
    """Acrobot-v1: swing a two-link chain above a line; Discrete(3) torques, -1 per step."""

    env_id = "sfspec/Acrobot-v1"
    gym_id = "Acrobot-v1"
    state_dim = 4  # theta1, theta2, dtheta1, dtheta2
    default_max_episode_steps = 500

    # gravity, link_length_1, link_mass_1, link_mass_2, link_com_1, link_com_2 (gymnasium's
    # LINK_COM_POS_*), link_moi (LINK_MOI, both links)
    parameters = PARAMETERS[env_id]
    dt = 0.2
    MAX_VEL_1 = 4 * math.pi
    MAX_VEL_2 = 9 * math.pi
    AVAIL_TORQUE = (-1.0, 0.0, +1)
    book_or_nips = "book"  # gymnasium's default dynamics variant

    def __init__(
        self,
        num_envs: int,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
        max_episode_steps: int | None = None,
    ) -> None:
        high = np.array([1.0, 1.0, 1.0, 1.0, self.MAX_VEL_1, self.MAX_VEL_2], dtype=np.float32)
        self.single_observation_space = spaces.Box(low=-high, high=high, dtype=np.float32)
        self.single_action_space = spaces.Discrete(3)
        super().__init__(num_envs, device, dtype, seed, max_episode_steps)
        self._torque = torch.tensor(self.AVAIL_TORQUE, dtype=dtype, device=self.device)
        self._vel_low = torch.tensor([-self.MAX_VEL_1, -self.MAX_VEL_2], dtype=dtype, device=self.device)
        self._vel_high = -self._vel_low

    def _initial_state(self) -> torch.Tensor:
        # gymnasium draws U(-0.1, 0.1) in float64 and stores it as float32.
        return self._uniform(-0.1, 0.1, 4).to(torch.float32).to(self.dtype)

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        s0, s1, s2, s3 = state.unbind(-1)
        return torch.stack((torch.cos(s0), torch.sin(s0), torch.cos(s1), torch.sin(s1), s2, s3), dim=-1)

    def _dynamics(self, state: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        torque = self._torque.index_select(0, actions)
        coefs = self._coefficients()
        # gymnasium's rk4 over t = [0, dt]; the torque is constant (its derivative is 0).
        dt = self.dt
        dt2 = dt / 2.0
        k1 = self._dsdt(state, torque, coefs)
        k2 = self._dsdt(state + dt2 * k1, torque, coefs)
        k3 = self._dsdt(state + dt2 * k2, torque, coefs)
        k4 = self._dsdt(state + dt * k3, torque, coefs)
        ns = state + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        angles = _wrap(ns[:, :2], -math.pi, math.pi)
        velocities = torch.clamp(ns[:, 2:], self._vel_low, self._vel_high)
        ns = torch.cat((angles, velocities), dim=-1)
        s0, s1 = angles.unbind(-1)
        terminated = -torch.cos(s0) - torch.cos(s1 + s0) > 1.0
        reward = terminated.to(self.dtype) - 1.0  # -1 per step, 0 on reaching the goal
        return ns, reward, terminated

    def _coefficients(self) -> dict[str, torch.Tensor]:
        """The products of parameters in gymnasium's ``_dsdt``, per row, as its Python floats round them."""
        p, c = self.params, self._coef
        m1, m2, l1 = p["link_mass_1"], p["link_mass_2"], p["link_length_1"]
        lc1, lc2, i, g = p["link_com_1"], p["link_com_2"], p["link_moi"], p["gravity"]
        return {
            "m1_lc1_2": c(m1 * lc1**2),
            "l1_2_lc2_2": c(l1**2 + lc2**2),
            "2_l1_lc2": c(2 * l1 * lc2),
            "m2": c(m2),
            "i": c(i),
            "lc2_2": c(lc2**2),
            "l1_lc2": c(l1 * lc2),
            "m2_lc2_g": c(m2 * lc2 * g),
            "m2_l1_lc2": c(m2 * l1 * lc2),
            "2_m2_l1_lc2": c(2 * m2 * l1 * lc2),
            "m1_lc1_m2_l1_g": c((m1 * lc1 + m2 * l1) * g),
            "m2_lc2_2_i": c(m2 * lc2**2 + i),
        }

    def _dsdt(self, s: torch.Tensor, a: torch.Tensor, k: dict[str, torch.Tensor]) -> torch.Tensor:
        """Time derivative of the state (gymnasium's ``_dsdt`` without the torque column).

        ``k`` holds gymnasium's products of constants (``_coefficients``); the tensor operations
        keep its order, so the nominal parameters give its arithmetic exactly.
        """
        pi = math.pi
        theta1, theta2, dtheta1, dtheta2 = s.unbind(-1)
        cos2, sin2 = torch.cos(theta2), torch.sin(theta2)
        d1 = k["m1_lc1_2"] + k["m2"] * (k["l1_2_lc2_2"] + k["2_l1_lc2"] * cos2) + k["i"] + k["i"]
        d2 = k["m2"] * (k["lc2_2"] + k["l1_lc2"] * cos2) + k["i"]
        phi2 = k["m2_lc2_g"] * torch.cos(theta1 + theta2 - pi / 2.0)
        phi1 = (
            -k["m2_l1_lc2"] * dtheta2**2 * sin2
            - k["2_m2_l1_lc2"] * dtheta2 * dtheta1 * sin2
            + k["m1_lc1_m2_l1_g"] * torch.cos(theta1 - pi / 2)
            + phi2
        )
        if self.book_or_nips == "nips":
            # consistent with the description in the paper
            ddtheta2 = (a + d2 / d1 * phi1 - phi2) / (k["m2_lc2_2_i"] - d2**2 / d1)
        else:
            # consistent with the java implementation and the book
            numerator = a + d2 / d1 * phi1 - k["m2_l1_lc2"] * dtheta1**2 * sin2 - phi2
            ddtheta2 = numerator / (k["m2_lc2_2_i"] - d2**2 / d1)
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return torch.stack((dtheta1, dtheta2, ddtheta1, ddtheta2), dim=-1)


def _wrap(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """gymnasium's ``wrap``: shift ``x`` by whole periods ``high - low`` until it is in ``[low, high]``."""
    diff = high - low
    # gymnasium subtracts/adds `diff` in a while loop; ceil() gives its iteration count directly.
    x = x - diff * torch.ceil((x - high) / diff).clamp_min(0)
    return x + diff * torch.ceil((low - x) / diff).clamp_min(0)


class MountainCarContinuousEnv(TensorEnv):
    """MountainCarContinuous-v0: drive an underpowered car up a hill; +100 at the goal, -0.1*a^2."""

    env_id = "sfspec/MountainCarContinuous-v0"
    gym_id = "MountainCarContinuous-v0"
    state_dim = 2  # position, velocity
    default_max_episode_steps = 999

    min_action = -1.0
    max_action = 1.0
    min_position = -1.2
    max_position = 0.6
    max_speed = 0.07
    goal_position = 0.45
    parameters = PARAMETERS[env_id]  # power (the engine), gravity (the hill's pull)

    def __init__(
        self,
        num_envs: int,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
        max_episode_steps: int | None = None,
        goal_velocity: float = 0,
    ) -> None:
        self.goal_velocity = goal_velocity
        low = np.array([self.min_position, -self.max_speed], dtype=np.float32)
        high = np.array([self.max_position, self.max_speed], dtype=np.float32)
        self.single_action_space = spaces.Box(
            low=self.min_action,
            high=self.max_action,
            shape=(1,),
            dtype=np.float32,
        )
        self.single_observation_space = spaces.Box(low=low, high=high, dtype=np.float32)
        super().__init__(num_envs, device, dtype, seed, max_episode_steps)

    def _initial_state(self) -> torch.Tensor:
        state = torch.zeros(self.num_envs, 2, dtype=self.dtype, device=self.device)
        state[:, 0].uniform_(-0.6, -0.4, generator=self.generator)
        return state

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        return state.clone()

    def _dynamics(self, state: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        position, velocity = state.unbind(-1)
        action = actions[:, 0]
        force = action.clamp(self.min_action, self.max_action)
        # gymnasium keeps this env's state in float32 (and numpy then computes in float32), so
        # wider dtypes round to float32 at the same points to stay on gymnasium's trajectory.
        power, gravity = self._coef(self.params["power"]), self._coef(self.params["gravity"])
        velocity = self._round_f32(velocity + (force * power - gravity * torch.cos(3 * position)))
        # numpy compares a float32 with a Python float in float32, hence the rounded bounds.
        max_speed = _f32(self.max_speed)
        velocity = velocity.clamp(-max_speed, max_speed)
        position = self._round_f32(position + velocity)
        min_position = _f32(self.min_position)
        position = position.clamp(min_position, _f32(self.max_position))
        # An inelastic wall on the left.
        velocity = velocity.masked_fill((position == min_position) & (velocity < 0), 0.0)
        terminated = (position >= _f32(self.goal_position)) & (velocity >= self.goal_velocity)
        reward = terminated.to(self.dtype) * 100.0 - action.square() * 0.1  # unclipped action, as gymnasium
        return torch.stack((position, velocity), dim=-1), reward, terminated
