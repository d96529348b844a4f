"""Stage 2: HiVA vision-language AU detection finetuning."""
