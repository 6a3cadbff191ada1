"""One export spec per component, registered under its manifest name on import.

    encoders.py      vision_encoder, mm_projector, region_encoder
    llm.py           embed_tokens, llm_decoder (KV cache in and out)
    signal.py        signal_projector.<module>
    segmentation.py  seg_image_encoder, seg_mask_decoder
    diffusion.py     unet, vae_encoder, vae_decoder
"""

from vitron_rt.export.specs import diffusion, encoders, llm, segmentation, signal  # noqa: F401  (registers)
