module ratethrottle/bindings/nginx/bench

go 1.22
