from lifelong.cli.app import main

main()
