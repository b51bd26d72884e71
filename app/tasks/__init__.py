"""Tasks on regions of an image: the task types (`types`), the regions they run on (`regions`) and
the engine that runs a task list over a request's images (`engine`). See app.schemas.tasks for the
request and response shapes (the image_embed service's)."""
