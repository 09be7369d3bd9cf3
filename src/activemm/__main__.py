from activemm.cli import main

main()
