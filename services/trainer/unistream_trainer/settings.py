"""Settings of the trainer service (``UNISTREAM_*`` environment variables).

The DQN hyperparameters are ``UNISTREAM_DQN_*``; :meth:`TrainerSettings.hyperparameters` turns
them into :class:`unistream_trainer.dqn.Hyperparameters` (whose docstrings explain each one).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import NoDecode

from unistream_common.settings import CommonSettings
from unistream_trainer.dqn import Hyperparameters, native_bf16


class TrainerSettings(CommonSettings):
    """DQN hyperparameters, publishing and checkpointing of the trainer."""

    model_dir: str = Field(
        "models", description="Merged models go to <model_dir>/<model>/<version>.safetensors (+ .json metadata)"
    )
    dqn_hidden_sizes: Annotated[tuple[int, ...], NoDecode] = Field(
        (256, 256), description="Comma-separated widths of the Q-network's shared layers, e.g. 256,256"
    )
    dqn_learning_rate: float = Field(1e-4, gt=0, description="Adam learning rate")
    dqn_gamma: float = Field(0.99, gt=0, le=1, description="Discount per 1s step")
    dqn_n_step: int = Field(3, ge=1, le=20, description="Steps per n-step return")
    dqn_buffer_size: int = Field(
        2_000, ge=1, description="Replay capacity, transitions (2 x this x ~13,451 x 4 bytes: 215 MB at 2,000)"
    )
    dqn_batch_size: int = Field(64, ge=1, description="Transitions per gradient step")
    dqn_learning_starts: int = Field(64, ge=1, description="Replay size before the first gradient step")
    dqn_updates_per_transition: float = Field(4.0, ge=0, description="Gradient steps per new transition")
    dqn_max_updates_per_batch: int = Field(
        16,
        ge=1,
        description="Most gradient steps per consumed batch; a batch holds this over UNISTREAM_DQN_UPDATES_PER_"
        "TRANSITION packets, so a backlog is learned at the live rate and a batch is done in well under a second",
    )
    dqn_tau: float = Field(0.005, gt=0, le=1, description="Target network update rate (1: copy)")
    dqn_target_network_frequency: int = Field(1, ge=1, description="Gradient steps between target updates")
    dqn_precision: Literal["auto", "float32", "bf16"] = Field(
        "auto",
        description="Matmuls of the DQN update: bf16 (autocast; weights and loss stay float32), float32, or auto "
        "(bf16 where the CPU has native bf16: AVX512-BF16/AMX)",
    )
    dqn_normalize: bool = Field(
        False,
        description="Standardise every state value by running statistics (kept in the checkpoint) before the DQN "
        "(off until shown to help: see docs/training.md)",
    )
    dqn_cnn_max_age: int = Field(
        20,
        ge=0,
        description="Replayed states built by a CNN more than this many versions older than the newest are not "
        "sampled (a version per merge round: 20 is 10 minutes at the default 30 s)",
    )
    dqn_max_grad_norm: float = Field(10.0, gt=0, description="Gradient clipping norm")
    dqn_start_e: float = Field(1.0, ge=0, le=1, description="Initial exploration epsilon")
    dqn_end_e: float = Field(0.05, ge=0, le=1, description="Final exploration epsilon")
    dqn_exploration_steps: int = Field(20_000, ge=0, description="Transitions over which epsilon decays")
    fee: float = Field(0.001, ge=0, lt=0.1, description="Fee per side, fraction of notional")
    reward_scale: float = Field(100.0, gt=0, description="Multiplier of stored rewards (100: percent)")
    max_gap_ms: int = Field(5_000, ge=1, description="Larger gaps between a symbol's states cut its run, ms")
    metrics_every_s: float = Field(5.0, gt=0, description="Seconds between MetricsPackets")
    checkpoint_keep: int = Field(10, ge=1, description="Newest merged model files kept per model on disk")
    merge_every_s: float = Field(
        30.0,
        gt=0,
        description="Seconds between merge rounds: replicas submit their weights, the leader averages and publishes "
        "(a replica's heartbeat lasts 3 rounds)",
    )
    claim_idle_ms: int = Field(
        20_000, ge=1_000, description="Training packets left this long by a dead replica are taken over, ms"
    )
    chain_cache: int = Field(
        256, ge=8, description="Training packets kept in memory to build transitions without fetching them again"
    )
    paper_trading: bool = Field(True, description="The leader paper-trades the current policy on every packet")
    paper_latency_ms: int = Field(
        1_000,
        ge=0,
        le=3_600_000,
        description="A paper decision fills at the first packet this long after it (1 s: the next bar), ms; "
        "unistream evaluate executes the same way",
    )
    paper_slippage_bps: float = Field(
        2.0, ge=0, lt=1_000, description="Spread and impact paid per side of a paper fill, beside the fee, bps"
    )
    paper_maxlen: int = Field(5_000, ge=10, description="Paper-trading fills kept on ml:paper, entries")
    extrema_updates_per_packet: float = Field(
        0.2,
        ge=0,
        description="Supervised steps of the CNN's extrema heads per training packet (taken by the CNN's owner, "
        "the lease holder, over every packet)",
    )
    metrics_maxlen: int = Field(10_000, ge=10, description="Approximate retention of the metrics stream, entries")
    models_maxlen: int = Field(1_000, ge=10, description="Approximate retention of the model registry stream, entries")

    @field_validator("dqn_hidden_sizes", mode="before")
    @classmethod
    def _split_sizes(cls, value: object) -> tuple[int, ...]:
        if isinstance(value, str):
            try:
                value = [int(x) for x in value.split(",") if x.strip()]
            except ValueError:
                raise ValueError("use comma-separated positive integers, e.g. 256,256") from None
        sizes = tuple(int(x) for x in value)  # type: ignore[union-attr]
        if not sizes or any(x < 1 for x in sizes):
            raise ValueError("use comma-separated positive integers, e.g. 256,256")
        return sizes

    @field_validator("dqn_batch_size")
    @classmethod
    def _batch_fits_replay(cls, value: int, info: ValidationInfo) -> int:
        capacity = info.data.get("dqn_buffer_size")
        if capacity is not None and value > capacity:
            raise ValueError(f"the batch ({value}) must not exceed UNISTREAM_DQN_BUFFER_SIZE ({capacity})")
        return value

    @field_validator("dqn_max_updates_per_batch")
    @classmethod
    def _a_packet_earns_its_updates(cls, value: int, info: ValidationInfo) -> int:
        per_packet = info.data.get("dqn_updates_per_transition")
        if per_packet is not None and value < per_packet:
            raise ValueError(
                f"must be at least UNISTREAM_DQN_UPDATES_PER_TRANSITION ({per_packet:g}): a batch of one packet "
                "would learn less than that packet earns"
            )
        return value

    @field_validator("dqn_learning_starts")
    @classmethod
    def _starts_after_one_batch(cls, value: int, info: ValidationInfo) -> int:
        batch = info.data.get("dqn_batch_size")
        if batch is not None and value < batch:
            raise ValueError(f"must be at least UNISTREAM_DQN_BATCH_SIZE ({batch}): a batch is sampled from the replay")
        return value

    def hyperparameters(self) -> Hyperparameters:
        return Hyperparameters(
            seed=self.seed,
            learning_rate=self.dqn_learning_rate,
            gamma=self.dqn_gamma,
            n_step=self.dqn_n_step,
            buffer_size=self.dqn_buffer_size,
            batch_size=self.dqn_batch_size,
            learning_starts=self.dqn_learning_starts,
            updates_per_transition=self.dqn_updates_per_transition,
            max_updates_per_batch=self.dqn_max_updates_per_batch,
            tau=self.dqn_tau,
            target_network_frequency=self.dqn_target_network_frequency,
            max_grad_norm=self.dqn_max_grad_norm,
            normalize=self.dqn_normalize,
            cnn_max_age=self.dqn_cnn_max_age,
            start_e=self.dqn_start_e,
            end_e=self.dqn_end_e,
            exploration_steps=self.dqn_exploration_steps,
            hidden_sizes=self.dqn_hidden_sizes,
            fee=self.fee,
            slippage=self.paper_slippage_bps / 10_000,
            # rewards credit the step the paper trader's fill holds (packets a second apart)
            fill_lag=math.ceil(self.paper_latency_ms / 1_000),
            reward_scale=self.reward_scale,
            bf16=self.dqn_precision == "bf16" or (self.dqn_precision == "auto" and native_bf16()),
        )
