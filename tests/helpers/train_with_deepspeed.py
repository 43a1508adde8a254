"""Fine-tune a tiny model with HF Trainer + DeepSpeed ZeRO on the CPU, as users do on GPUs.

Run with `torchrun --nproc_per_node 2 train_with_deepspeed.py BASE_MODEL STAGE OUTPUT_DIR [MAX_STEPS SAVE_STEPS]`
and DS_ACCELERATOR=cpu (gloo). Writes OUTPUT_DIR/checkpoint-2 and checkpoint-4 (by default; the HF Trainer +
DeepSpeed layout) and
OUTPUT_DIR/probe.pt: token ids and the trained model's logits for them, computed by the live DeepSpeed engine.
"""

import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments


class RandomTokens(Dataset):
    def __len__(self) -> int:
        return 32

    def __getitem__(self, index: int) -> dict:
        ids = torch.randint(0, 500, (16,), generator=torch.Generator().manual_seed(index))
        return {"input_ids": ids, "labels": ids.clone()}


def without_cpu_only_extensions() -> None:
    """No C++ extension is compiled for the run: DeepSpeed's CPU accelerator would build its shared-memory
    collectives (a minute or more of g++ per environment) and its fused CPU Adam, and a build killed half way leaves
    a lock that every later run waits on forever. Neither exists on the GPUs users train on, and neither changes
    what a checkpoint holds: gloo does the collectives, and torch's AdamW (the Trainer's own, as the config names
    no optimizer) keeps the same exp_avg/exp_avg_sq state per partition."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def main() -> None:
    without_cpu_only_extensions()
    base, stage, output = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    max_steps, save_steps = (int(sys.argv[4]), int(sys.argv[5])) if len(sys.argv) > 5 else (4, 2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    # A frozen parameter: DeepSpeed stores it apart from the optimizer's partitions.
    model.model.layers[0].mlp.down_proj.weight.requires_grad_(False)
    zero = {"stage": stage}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    deepspeed_config = {
        "zero_optimization": zero,
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
    }
    arguments = TrainingArguments(
        output_dir=str(output),
        per_device_train_batch_size=2,
        max_steps=max_steps,
        save_steps=save_steps,
        learning_rate=1e-2,
        weight_decay=0.0,
        deepspeed=deepspeed_config,
        report_to=[],
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=RandomTokens(),
        processing_class=AutoTokenizer.from_pretrained(base),  # saved in each checkpoint-N, as users do
    )
    trainer.train()

    probe = torch.randint(0, 500, (1, 12), generator=torch.Generator().manual_seed(123))
    engine = trainer.model_wrapped
    engine.eval()
    with torch.no_grad():
        logits = engine(input_ids=probe).logits  # every rank takes part under ZeRO-3
    if trainer.is_world_process_zero():
        torch.save({"input_ids": probe, "logits": logits.float()}, output / "probe.pt")


if __name__ == "__main__":
    main()
