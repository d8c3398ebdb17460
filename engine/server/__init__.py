"""HTTP serving of a reward model: `reward-engine serve`.

Every endpoint turns its request into token sequences and awaits them on one shared
``AsyncRewardEngine``, so requests from every client join the same continuous batch
and share the prefix cache. The package depends on the engine core, never the reverse.

    config.py    ServerConfig: the command line's options as a record
    app.py       create_app(config, engine=None) -> FastAPI (lifespan, middleware, routes)
    schemas.py   request and response models (they are the OpenAPI schema)
    scoring.py   sequences -> rewards on the engine, with backpressure and timeouts
    routes/      one module per API family (NIM/OpenAI chat, score, OpenRLHF, vLLM
                 classify, tokenize, health and models)
    middleware.py  body-size limit, API key, request log and metrics (pure ASGI)
    metrics.py   Prometheus metrics of the server and the engine
    errors.py    APIError and the {"error": {"message", "type", "code"}} responses
    cli.py       `reward-engine serve` and the uvicorn runner with graceful drain
"""
