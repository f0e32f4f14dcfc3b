from srq.metrics.sr import rgb_to_y, sr_image_metrics, summarize

__all__ = ["rgb_to_y", "sr_image_metrics", "summarize"]
