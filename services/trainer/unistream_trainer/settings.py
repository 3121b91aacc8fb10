"""Settings of the trainer service (``UNISTREAM_*`` environment variables).

The DQN hyperparameters are ``UNISTREAM_DQN_<NAME>``, generated from the fields of
:class:`unistream_trainer.dqn.Hyperparameters` named in :data:`DQN_SETTINGS`: the dataclass holds
each one's default, bounds and meaning once, and :meth:`TrainerSettings.hyperparameters` maps
them back. The costs and the fill lag come from the paper-trading settings, so training and
paper trading price a position change alike.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import Field, ValidationInfo, create_model, field_validator
from pydantic_settings import NoDecode

from unistream_common.settings import CommonSettings, attribute_docstrings
from unistream_trainer.dqn import Hyperparameters, native_bf16

# Hyperparameters a deployment tunes, each as UNISTREAM_DQN_<NAME>. The rest are set from other
# settings (seed, fee, slippage, fill_lag, reward_scale, bf16 from dqn_precision) or fixed
# (known_costs, clip_obs: the sanity suite's evidence is for these values).
DQN_SETTINGS: tuple[str, ...] = (
    "hidden_sizes",
    "learning_rate",
    "gamma",
    "n_step",
    "buffer_size",
    "batch_size",
    "learning_starts",
    "updates_per_transition",
    "max_updates_per_batch",
    "tau",
    "target_network_frequency",
    "normalize",
    "cnn_max_age",
    "max_grad_norm",
    "start_e",
    "end_e",
    "exploration_steps",
)


def _dqn_fields() -> dict[str, Any]:
    """``dqn_<name>`` settings fields from the dataclass: its type with bounds, default and docstring."""
    hints = get_type_hints(Hyperparameters, include_extras=True)
    docs = attribute_docstrings(Hyperparameters)
    defaults = {f.name: f.default for f in dataclasses.fields(Hyperparameters)}
    fields: dict[str, Any] = {}
    for name in DQN_SETTINGS:
        hint = hints[name]
        if name == "hidden_sizes":  # "256,256" from the environment: split by the validator below
            hint = Annotated[hint, NoDecode]
        # The docstring as Markdown for the configuration table: Sphinx roles and ``literals`` to `code`.
        text = re.sub(r":[a-z]+:`", "`", docs[name]).replace("``", "`")
        fields[f"dqn_{name}"] = (hint, Field(defaults[name], description=text[:1].upper() + text[1:]))
    return fields


_DQNSettings = create_model("_DQNSettings", __base__=CommonSettings, **_dqn_fields())


class TrainerSettings(_DQNSettings):  # type: ignore[misc,valid-type]
    """DQN hyperparameters, publishing and checkpointing of the trainer."""

    model_dir: str = Field(
        "models", description="Merged models go to <model_dir>/<model>/<version>.safetensors (+ .json metadata)"
    )
    dqn_precision: Literal["auto", "float32", "bf16"] = Field(
        "auto",
        description="Matmuls of the DQN update: bf16 (autocast; weights and loss stay float32), float32, or auto "
        "(bf16 where the CPU has native bf16: AVX512-BF16/AMX)",
    )
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
        """The DQN's hyperparameters as deployed: the ``dqn_*`` settings and the paper trader's costs."""
        return Hyperparameters(
            seed=self.seed,
            **{name: getattr(self, f"dqn_{name}") for name in DQN_SETTINGS},
            fee=self.fee,
            slippage=self.paper_slippage_bps / 10_000,
            # rewards credit the step the paper trader's fill holds (packets a second apart)
            fill_lag=math.ceil(self.paper_latency_ms / 1_000),
            reward_scale=self.reward_scale,
            bf16=self.dqn_precision == "bf16" or (self.dqn_precision == "auto" and native_bf16()),
        )
