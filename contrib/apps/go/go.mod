module example.com/shadow-example-go

go 1.19
