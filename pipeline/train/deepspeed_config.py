"""PretrainConfig -> the DeepSpeed config dict, with the memory settings measured in BENCHMARKS.md."""

from __future__ import annotations

from schemas.pretrain import PretrainConfig


def deepspeed_config(config: PretrainConfig) -> dict:
    zero = config.zero
    buckets = zero.bucket_elements
    optimization: dict = {
        "stage": zero.stage,
        # DeepSpeed's 5e8-element defaults are a ~2 GB fp32 buffer per rank; measured on CPU, they ate the saving
        # of every stage (BENCHMARKS.md, "Training").
        "reduce_bucket_size": buckets, "allgather_bucket_size": buckets, "contiguous_gradients": True,
        "overlap_comm": False,
    }
    if zero.stage == 3:
        optimization.update(stage3_prefetch_bucket_size=buckets, stage3_max_live_parameters=2 * buckets,
                            stage3_max_reuse_distance=2 * buckets, stage3_param_persistence_threshold=10_000,
                            sub_group_size=50_000_000)
    if zero.offload_optimizer:
        optimization["offload_optimizer"] = {"device": "cpu"}
    if zero.offload_params:
        optimization["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": config.loader.batch_size,
        "gradient_accumulation_steps": config.optim.grad_accumulation,
        "gradient_clipping": config.optim.grad_clip,
        "bf16": {"enabled": config.precision == "bf16"},
        "zero_optimization": optimization,
        # The client AdamW (torch, fused where it can be) is what we measured; DeepSpeed only warns about it.
        "zero_allow_untested_optimizer": True,
        # Under optimizer offload DeepSpeed refuses a client optimizer unless told otherwise: it wants its
        # DeepSpeedCPUAdam, a C++ op compiled on first use. torch's fused AdamW runs vectorised on the offloaded
        # CPU partitions too. Without offload the key has no effect.
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,  # progress lines are ours
    }
