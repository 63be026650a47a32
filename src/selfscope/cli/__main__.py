from selfscope.cli import main

main()
