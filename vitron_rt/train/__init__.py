"""Training the mini Vitron on ShapesWorld (torch): the paper's recipe, scaled down.

`stages` defines the stages, `data` turns samples into batches the way the runtime
prepares its inputs, `conditioning` holds the back ends' own scene-code conditioning
(what they are pretrained on and what the signal projectors align to), `forward` is the
training forward and its losses, `trainer` runs a stage, and `budget` times steps and
plans a run that fits a time budget (`python -m vitron_rt.train.budget`).
"""
