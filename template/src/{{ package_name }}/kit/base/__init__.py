"""The ground floor: files and the machine. Nothing here imports torch, Lightning or the rest of the kit."""
