"""ShapeWorld, the procedural long-video world: what happens (world), pixels (render), language (questions),
and training batches (batches)."""
