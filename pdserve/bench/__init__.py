"""`pdserve bench`: the serving benchmark client.

Life of a benchmark run:
1. `workload` turns flags (synthetic lengths, a trace, a ramp) into a schedule of `BenchRequest`s:
   arrival time, prompt length, output length, prefix hash ids. `arrivals` draws the arrival times and
   `prompts` builds each prompt as exact token ids when the request is sent.
2. `loadgen` sends them open-loop (each at its arrival time, whatever the server's state) through an
   `endpoints` driver (gRPC SDK or OpenAI-compatible HTTP) and times every token into an `Outcome`.
3. `stats` reduces outcomes to latency percentiles, throughput, goodput, failures and server usage;
   `report` prints the table, writes the JSON document and compares against a baseline run.
4. With `--ramp`, `ramp` polls the cluster status every second and writes replicas over time (CSV, PNG).

A client of the cluster: imports the SDK (`pdserve.client`), the generated stubs and the trace readers of
`simulations.traces`; never the servers, workers or policies.
"""
