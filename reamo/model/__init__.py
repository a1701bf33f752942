"""Reamo's model: ImageBind encoder -> projector -> LoRA-tuned LLaMA-family LLM."""

from reamo.model.modeling_reamo import LoraSettings, Projector, ReamoConfig, ReamoModel

__all__ = ["LoraSettings", "Projector", "ReamoConfig", "ReamoModel"]
