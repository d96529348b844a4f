"""aukit: facial Action Unit detection with region/relation pretraining and HiVA finetuning."""

__version__ = "0.1.0"
