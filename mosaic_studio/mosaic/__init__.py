"""MOSAIC, the method: the multi-branch FLUX forward, the group-masked attention, the Eq. 8 probe,
the SCAL and MDL losses, the pipeline and the reference LoRA. `mosaic_studio` re-exports its
public names; `mosaic_studio.mosaic.data` holds the SemAlign-MS sample format and readers.
"""
