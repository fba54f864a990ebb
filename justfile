# The same recipes as `cargo xtask`, for people who use just.

# Install and start the stack and every service, fed by a simulated fleet.
up:
    cargo xtask up

# Stop everything `up` started.
down:
    cargo xtask down

# Install and start what the tests need, then run the whole suite.
test *ARGS:
    cargo xtask test {{ARGS}}

# Start only PostgreSQL, Mosquitto and Tansu.
stack:
    cargo xtask stack

# What runs.
status:
    cargo xtask status

# Apply migrations to the local database.
migrate:
    cargo run -q -p iotctl -- migrate

# Run the ingest benchmark (release build, real stack).
bench-ingest:
    cargo xtask bench ingest

# The fault suite: kills and restarts under a steady fleet (`--short` too).
faults *ARGS:
    cargo xtask faults {{ARGS}}
