from __future__ import annotations

from pathlib import Path

from gateway.routing.load import parse_metrics
from gateway.sim.state import SimState

# Verbatim /metrics of vLLM 0.32 (CPU, SmolLM2-135M) after two chat requests that shared a
# 128-token prefix; every gauge was back at 0 when it was read.
VLLM_METRICS = (Path(__file__).parent / "data" / "vllm-0.32-metrics.txt").read_text()
LABELS = '{engine="0",model_name="m"}'


def test_real_vllm_metrics_give_queue_cache_and_prefix_counters() -> None:
    load = parse_metrics(VLLM_METRICS, scraped_at=12.5)
    assert load is not None
    assert (load.running, load.waiting, load.kv_usage) == (0.0, 0.0, 0.0)
    assert (load.prefix_hits, load.prefix_queries) == (128.0, 512.0)
    assert load.scraped_at == 12.5


def test_busy_engine_values_and_lookalike_names_left_out() -> None:
    text = VLLM_METRICS.replace(
        'vllm:num_requests_running{engine="0",model_name="smollm2-135m-instruct"} 0.0',
        'vllm:num_requests_running{engine="0",model_name="smollm2-135m-instruct"} 3.0',
    ).replace(
        'reason="capacity"} 0.0',  # vllm:num_requests_waiting_by_reason: not the queue itself
        'reason="capacity"} 7.0',
    )
    load = parse_metrics(text, 0.0)
    assert load is not None
    assert (load.running, load.waiting) == (3.0, 0.0)


def test_series_of_data_parallel_engines_add_up_and_the_fullest_cache_counts() -> None:
    text = "\n".join(
        [
            'vllm:num_requests_running{engine="0",model_name="m"} 2',
            'vllm:num_requests_running{engine="1",model_name="m"} 3',
            'vllm:num_requests_waiting{engine="1",model_name="m"} 4',
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25',
            'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75',
        ]
    )
    load = parse_metrics(text, 1.0)
    assert load is not None
    assert (load.running, load.waiting, load.kv_usage) == (5.0, 4.0, 0.75)


def test_labels_with_spaces_and_braces_timestamps_and_no_labels() -> None:
    text = "\n".join(
        [
            'vllm:num_requests_running{model_name="a model {x} y"} 2.0 1700000000000',
            "vllm:num_requests_waiting 1",
            "vllm:prefix_cache_hits_total{} 9e1",
        ]
    )
    load = parse_metrics(text, 1.0)
    assert load is not None
    assert (load.running, load.waiting, load.prefix_hits) == (2.0, 1.0, 90.0)


def test_bad_values_are_skipped_and_text_without_load_is_none() -> None:
    text = "\n".join(
        [
            f"vllm:num_requests_running{LABELS} NaN",
            f"vllm:num_requests_running{LABELS} +Inf",
            f"vllm:num_requests_running{LABELS} many",
            f"vllm:num_requests_running{LABELS}",
            f"vllm:num_requests_waiting{LABELS} 2",
        ]
    )
    load = parse_metrics(text, 1.0)
    assert load is not None
    assert (load.running, load.waiting) == (0.0, 2.0)
    assert parse_metrics("", 1.0) is None
    assert parse_metrics("<html>502 Bad Gateway</html>", 1.0) is None
    assert parse_metrics(f"vllm:num_requests_running{LABELS} NaN", 1.0) is None
    assert parse_metrics("\x00\xff{}} {{", 1.0) is None


def test_the_simulators_set_queue_is_what_the_scraper_reads() -> None:
    state = SimState("sim-model", kv_cache_tokens=100)
    state.waiting = 7  # POST /sim/queue
    load = parse_metrics(state.metrics_text(), scraped_at=1.0)
    assert load is not None
    assert (load.waiting, load.running) == (7.0, 0.0)
    state.reset()
    drained = parse_metrics(state.metrics_text(), scraped_at=2.0)
    assert drained is not None
    assert drained.waiting == 0.0
